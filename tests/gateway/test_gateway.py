"""The gateway end to end: real upstream, real SQLite store, real HTTP.

Each test states one behaviour of the decision, shadow mode, authentication or the
HTTP contract as a client sees it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
import yarl
from multidict import CIMultiDict

from harness import Gateway, free_port, start_gateway
from permgate.manage.service import Actor


async def call(
    http: aiohttp.ClientSession,
    gw: Gateway,
    method: str,
    path: str,
    credential: str | None = None,
    **kwargs: object,
) -> tuple[int, dict[str, object], aiohttp.ClientResponse]:
    headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
    if credential is not None:
        headers["Authorization"] = f"Bearer {credential}"
    url = yarl.URL(gw.url + path, encoded=True)  # send the target byte for byte
    async with http.request(method, url, headers=headers, **kwargs) as response:  # type: ignore[arg-type]
        body = await response.read()
        data = orjson.loads(body) if body and response.content_type == "application/json" else {}
        return response.status, data, response


@dataclass(frozen=True)
class Row:
    rule: str
    who: str  # a token name, or "jwt:<principal>"
    method: str
    path: str
    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


ACCESS = [
    Row(
        "allowed with every required permission (token)",
        "alice",
        "POST",
        "/policy/acme-prod/quotes",
        200,
    ),
    Row(
        "allowed with every required permission (JWT)",
        "jwt:alice",
        "POST",
        "/policy/acme-prod/quotes",
        200,
    ),
    Row("unmapped route is denied (token)", "alice", "GET", "/nowhere", 403, "unmapped_route"),
    Row(
        "unmapped route is denied even without credentials",
        "none",
        "GET",
        "/nowhere",
        403,
        "unmapped_route",
    ),
    Row("public endpoint needs no credential", "none", "GET", "/health", 200),
    Row(
        "tenant outside the scope (JWT)",
        "jwt:alice",
        "GET",
        "/policy/acme-test/quotes/q1",
        403,
        "tenant_out_of_scope",
    ),
    Row(
        "unknown tenant gets the same answer",
        "jwt:alice",
        "GET",
        "/policy/ghost/quotes/q1",
        403,
        "tenant_out_of_scope",
    ),
    Row(
        "other account's tenant is out of scope (token)",
        "bob",
        "GET",
        "/policy/globex-prod/quotes/q1",
        403,
        "tenant_out_of_scope",
    ),
    Row(
        "scope any reaches every tenant of the account",
        "bob",
        "GET",
        "/policy/acme-test/quotes/q1",
        200,
    ),
    Row("type:test reaches TEST tenants", "jwt:erin", "GET", "/policy/acme-test/quotes/q1", 200),
    Row(
        "type:test does not reach PRODUCTION",
        "jwt:erin",
        "GET",
        "/policy/acme-prod/quotes/q1",
        403,
        "tenant_out_of_scope",
    ),
    Row(
        "admin reaches every tenant of its account implicitly",
        "jwt:root",
        "POST",
        "/policy/acme-test/quotes/q1/issue",
        200,
    ),
    Row(
        "admin never reaches another account",
        "root",
        "GET",
        "/policy/globex-prod/quotes/q1",
        403,
        "tenant_out_of_scope",
    ),
    Row(
        "missing permission is denied",
        "jwt:bob",
        "POST",
        "/policy/acme-prod/quotes",
        403,
        "missing_permission",
    ),
    Row(
        "all listed permissions are required",
        "jwt:alice",
        "POST",
        "/policy/acme-prod/quotes/q1/issue",
        403,
        "missing_permission",
    ),
    Row(
        "any_of needs one of its permissions",
        "jwt:erin",
        "POST",
        "/policy/acme-test/quotes/q1/price",
        200,
    ),
    Row(
        "read-only: a POST needing only a read permission",
        "jwt:erin",
        "POST",
        "/search/acme-test/search",
        200,
    ),
    Row(
        "role held on one tenant applies there", "jwt:dave", "POST", "/policy/acme-test/quotes", 200
    ),
    Row(
        "role held on one tenant does not apply elsewhere",
        "jwt:dave",
        "POST",
        "/policy/acme-prod/quotes",
        403,
        "missing_permission",
    ),
    Row(
        "no permissions listed: authentication and tenant only",
        "jwt:dave",
        "GET",
        "/policy/acme-prod/ping",
        200,
    ),
    Row(
        "token capped by its own grants",
        "alice-readonly",
        "POST",
        "/policy/acme-prod/quotes",
        403,
        "missing_permission",
    ),
    Row(
        "tenant from a header",
        "bob",
        "GET",
        "/legacy/quotes",
        200,
        None,
        (("X-Tenant", "acme-prod"),),
    ),
    Row(
        "missing tenant header is out of scope",
        "bob",
        "GET",
        "/legacy/quotes",
        403,
        "tenant_out_of_scope",
    ),
    Row("HEAD is authorized as GET", "bob", "HEAD", "/policy/acme-prod/quotes/q1", 200),
]


def credential_of(gw: Gateway, who: str) -> str | None:
    if who == "none":
        return None
    if who.startswith("jwt:"):
        return gw.jwt(who[4:])
    return gw.tokens[who]


@pytest.mark.parametrize("row", ACCESS, ids=[r.rule for r in ACCESS])
async def test_access_model_through_http(
    gw: Gateway, http: aiohttp.ClientSession, row: Row
) -> None:
    """Each row is one rule of the decision seen through the gateway."""
    status, body, _ = await call(
        http, gw, row.method, row.path, credential_of(gw, row.who), headers=dict(row.headers)
    )
    assert status == row.status, body
    if row.reason is not None:
        assert body["reason"] == row.reason


async def test_denial_body_lists_missing_permissions(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """A 403 is JSON with the reason, what is missing and the request id."""
    status, body, response = await call(
        http, gw, "POST", "/policy/acme-prod/quotes", gw.jwt("bob"), headers={"X-Request-Id": "r-1"}
    )
    assert status == 403
    assert response.content_type == "application/json"
    assert body == {
        "error": "forbidden",
        "reason": "missing_permission",
        "missing_permissions": ["quotes.write"],
        "request_id": "r-1",
    }
    assert gw.upstream.seen == []


UNAUTHENTICATED = [
    ("missing_credentials", lambda gw: None),
    ("invalid_token", lambda gw: "pgt_0123456789abcdef_" + "A" * 43),
    ("invalid_token", lambda gw: "not-a-jwt"),
    ("expired_token", lambda gw: gw.jwt("alice", exp=int(time.time()) - 3600)),
    ("unknown_principal", lambda gw: gw.jwt("nobody")),
    ("disabled_principal", lambda gw: gw.tokens["carol"]),
    ("disabled_principal", lambda gw: gw.jwt("carol")),
]


@pytest.mark.parametrize(("reason", "make"), UNAUTHENTICATED, ids=[r for r, _ in UNAUTHENTICATED])
async def test_each_401_reason(gw: Gateway, http: aiohttp.ClientSession, reason: str, make) -> None:
    """Authentication failures answer 401 with their reason and a Bearer challenge."""
    status, body, response = await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", make(gw))
    assert status == 401
    assert body["error"] == "unauthenticated"
    assert body["reason"] == reason
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="permgate"')
    assert ('error="invalid_token"' in challenge) is (reason != "missing_credentials")


async def test_revoked_token_is_refused_on_the_next_request(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Revoking a token through the model takes effect on the very next request."""
    secret = gw.tokens["alice"]
    assert (await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", secret))[0] == 200
    token_id = secret.removeprefix("pgt_").split("_")[0]
    await gw.service.revoke_token(Actor.cli(), token_id)
    await gw.runtime.deliver_changes()
    status, body, _ = await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", secret)
    assert (status, body["reason"]) == (401, "revoked_token")


async def test_removing_a_role_revokes_older_sessions(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Losing a role logs the principal out: its older JWTs get session_revoked."""
    old_jwt = gw.jwt("bob", iat=int(time.time()) - 10)
    assert (await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", old_jwt))[0] == 200
    await gw.service.set_principal_roles(Actor.cli(), "bob", [("reader", None)])
    await gw.runtime.deliver_changes()
    status, body, _ = await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", old_jwt)
    assert (status, body["reason"]) == (401, "session_revoked")


async def test_role_change_applies_to_the_same_jwt_on_the_next_request(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Editing a role's grants changes the very next decision, with no re-login."""
    token = gw.jwt("alice")
    assert (await call(http, gw, "POST", "/policy/acme-prod/quotes", token))[0] == 200
    await gw.service.update_role(Actor.cli(), "acme", "sales-agent", permissions=["quotes.read"])
    await gw.runtime.deliver_changes()
    status, body, _ = await call(http, gw, "POST", "/policy/acme-prod/quotes", token)
    assert (status, body["reason"]) == (403, "missing_permission")


async def test_change_from_another_process_arrives_within_a_second(
    gw: Gateway, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A change committed by another store client (as `permgate apply` would) reaches
    the gateway through the store's change notifications, without a local nudge."""
    from permgate.manage.service import ModelService
    from permgate.store import open_store

    token = gw.jwt("alice")
    assert (await call(http, gw, "POST", "/policy/acme-prod/quotes", token))[0] == 200
    other = await open_store(f"sqlite://{tmp_path}/permgate.db")
    try:
        await ModelService(other).update_role(
            Actor.cli(), "acme", "sales-agent", permissions=["quotes.read"]
        )
    finally:
        await other.close()
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        status, _, _ = await call(http, gw, "POST", "/policy/acme-prod/quotes", token)
        if status == 403:
            break
        await asyncio.sleep(0.02)
    assert status == 403
    assert time.monotonic() - started < 1.0


async def test_forwarded_request_carries_identity_not_credential(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """The upstream sees who called, on which tenant, with which token — never the secret."""
    secret = gw.tokens["alice"]
    status, seen, _ = await call(
        http,
        gw,
        "POST",
        "/policy/acme-prod/quotes?x=%2F..",
        secret,
        data=b'{"q":1}',
        headers={"X-Permgate-Principal": "mallory", "X-Request-Id": "abc-123"},
    )
    assert status == 200
    assert isinstance(seen["headers"], dict)
    headers = CIMultiDict(seen["headers"])
    assert seen["raw_path"] == "/policy/acme-prod/quotes?x=%2F.."
    assert seen["body"] == '{"q":1}'
    assert headers["X-Permgate-Principal"] == "alice"
    assert headers["X-Permgate-Principal-Kind"] == "user"
    assert headers["X-Permgate-Tenant"] == "acme-prod"
    assert headers["X-Permgate-Token-Id"] == secret.removeprefix("pgt_").split("_")[0]
    assert headers["X-Request-Id"] == "abc-123"
    assert "Authorization" not in headers
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert all(secret not in value for value in headers.values())


async def test_shadow_tenant_forwards_a_deny_and_records_it(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """In shadow mode a deny is forwarded and counted as shadow_deny."""
    status, _, _ = await call(
        http, gw, "POST", "/policy/acme-shadow/quotes/q1/issue", gw.tokens["alice"]
    )
    assert status == 200
    assert gw.upstream.seen[-1]["raw_path"] == "/policy/acme-shadow/quotes/q1/issue"
    metrics = await (await http.get(gw.admin_url + "/metrics")).text()
    assert (
        'permgate_decisions_total{decision="shadow_deny",endpoint="quotes.issue",'
        'reason="missing_permission"} 1.0' in metrics
    )


async def test_shadow_tenant_still_refuses_unauthenticated(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Shadow mode never forwards a request without valid credentials."""
    status, body, _ = await call(http, gw, "POST", "/policy/acme-shadow/quotes")
    assert (status, body["reason"]) == (401, "missing_credentials")
    assert gw.upstream.seen == []


async def test_gateway_listener_serves_no_admin_routes(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """/metrics, /healthz and /v1 exist on the admin listener only."""
    for path in ("/metrics", "/healthz", "/readyz", "/v1/tenants"):
        status, body, _ = await call(http, gw, "GET", path)
        assert (status, body["reason"]) == (403, "unmapped_route")


async def test_health_and_readiness_on_the_admin_listener(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """/healthz answers 200; /readyz reports map, store and listener ready."""
    async with http.get(gw.admin_url + "/healthz") as response:
        assert response.status == 200
    async with http.get(gw.admin_url + "/readyz") as response:
        assert response.status == 200
        body = await response.json()
        assert body["checks"] == {"endpoint_map": True, "store": True, "gateway_listener": True}


async def test_upstream_unreachable_answers_502(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A connect error to the upstream is a JSON 502."""
    async with start_gateway(tmp_path, upstream_url=f"http://127.0.0.1:{free_port()}") as gw:
        status, body, _ = await call(
            http, gw, "GET", "/policy/acme-prod/quotes/q1", gw.tokens["bob"]
        )
    assert status == 502
    assert body["error"] == "bad_gateway"


async def test_upstream_timeout_answers_504(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """An upstream slower than upstream_timeout_seconds is a JSON 504."""
    async with start_gateway(tmp_path, upstream_timeout_seconds=0.3) as gw:
        status, body, _ = await call(http, gw, "GET", "/slow/acme-prod", gw.tokens["bob"])
    assert status == 504
    assert body["error"] == "gateway_timeout"


async def test_streamed_download_first_chunk_arrives_before_the_last_is_sent(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Responses stream through: the client reads chunk one while the upstream waits."""
    headers = {"Authorization": f"Bearer {gw.tokens['bob']}"}
    async with http.get(gw.url + "/files/acme-prod/download", headers=headers) as response:
        assert response.status == 200
        first = await asyncio.wait_for(response.content.readline(), timeout=5)
        assert first == b"first-chunk\n"
        gw.upstream.release.set()
        assert await response.content.readline() == b"last-chunk\n"


async def test_streamed_upload_reaches_the_upstream(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """A large body is streamed to the upstream, not refused or truncated."""
    size = 32 * 1024 * 1024

    async def body() -> AsyncIterator[bytes]:
        chunk = b"x" * (1024 * 1024)
        for _ in range(size // len(chunk)):
            yield chunk

    headers = {"Authorization": f"Bearer {gw.tokens['alice']}"}
    async with http.put(
        gw.url + "/files/acme-prod/upload", data=body(), headers=headers
    ) as response:
        assert response.status == 200
        assert (await response.json()) == {"received": size}


async def test_decisions_are_cached_and_counted(gw: Gateway, http: aiohttp.ClientSession) -> None:
    """A repeated request is a cache hit; metrics count hits and misses."""
    for _ in range(3):
        await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", gw.tokens["bob"])
    metrics = await (await http.get(gw.admin_url + "/metrics")).text()
    assert 'permgate_decision_cache_total{result="miss"} 1.0' in metrics
    assert 'permgate_decision_cache_total{result="hit"} 2.0' in metrics
