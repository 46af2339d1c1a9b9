"""The decision service on ``authz_listen``, called directly: forward auth, the Envoy
door, AuthZEN, the trusted-proxy rule, metrics and audit per door, decision-only mode.

Real gateways on loopback (``harness.start_gateway``); the real proxies in front of
it are in ``test_envoy_authz.py`` and ``test_nginx_authz.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness import Gateway, eventually, start_gateway
from permgate.config import load_settings
from permgate.core.errors import ConfigError
from permgate.core.reasons import ALL_REASONS, DoorReason
from permgate.gateway.authz import forwarded_request
from permgate.manage.service import Actor

IDENTITY = (
    "X-Permgate-Principal",
    "X-Permgate-Principal-Kind",
    "X-Permgate-Tenant",
    "X-Permgate-Token-Id",
    "X-Request-Id",
)


class Decider:
    """A gateway with its decision listener, and a token allowed to ask AuthZEN."""

    def __init__(self, gw: Gateway, authz_url: str, evaluator_token: str) -> None:
        self.gw = gw
        self.url = authz_url
        self.evaluator_token = evaluator_token

    def _decisions(self) -> list[dict[str, Any]]:
        return [
            event
            for event in (json.loads(line) for line in self.gw.audit_lines())
            if event.get("event") == "decision"
        ]

    async def decisions(self, count: int = 1) -> list[dict[str, Any]]:
        """The decision events so far, once there are at least ``count`` (the audit
        writer runs behind the answers)."""
        return await eventually(
            lambda: (events := self._decisions()) and len(events) >= count and events,
            f"{count} decision event(s)",
        )


async def _decider(tmp_path: Path, **overrides: Any) -> AsyncIterator[Decider]:
    async with start_gateway(tmp_path, authz_listen="127.0.0.1:0", **overrides) as gw:
        cli = Actor.cli()
        await gw.service.create_role(cli, "acme", "decider", "Decider", ["decisions.evaluate"])
        await gw.service.create_principal(
            cli, "acme", "app", kind="client", roles=[("decider", None)]
        )
        _, secret = await gw.service.create_token(cli, "app", "pdp", ["decisions.evaluate"], [])
        await gw.runtime.deliver_changes()
        yield Decider(gw, gw.authz_url, secret)


@pytest.fixture
async def dec(tmp_path: Path) -> AsyncIterator[Decider]:
    """A gateway with the decision service on a free loopback port."""
    async for decider in _decider(tmp_path):
        yield decider


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# -- forward auth: reading the original request ---------------------------------------

FORWARDED_HEADERS = [
    pytest.param([("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/a?b")], ("GET", "/a?b"),
                 id="traefik-caddy"),
    pytest.param([("X-Original-Method", "POST"), ("X-Original-URI", "/a")], ("POST", "/a"),
                 id="nginx"),
    pytest.param([("x-original-uri", "/a"), ("x-original-method", "PUT")], ("PUT", "/a"),
                 id="lower-case"),
    pytest.param([("X-Original-URI", "/a")], DoorReason.MISSING_FORWARDED_METHOD,
                 id="no-method-is-never-get"),
    pytest.param([("X-Forwarded-Method", "GET")], DoorReason.MISSING_FORWARDED_URI, id="no-uri"),
    pytest.param([], DoorReason.MISSING_FORWARDED_METHOD, id="nothing"),
    pytest.param([("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/a"),
                  ("X-Original-Method", "DELETE"), ("X-Original-URI", "/b")],
                 DoorReason.AMBIGUOUS_FORWARDED_REQUEST, id="both-families"),
    pytest.param([("X-Forwarded-Method", "GET"), ("X-Original-URI", "/a")],
                 DoorReason.AMBIGUOUS_FORWARDED_REQUEST, id="mixed-families"),
    pytest.param([("X-Original-Method", "GET"), ("X-Original-Method", "DELETE"),
                  ("X-Original-URI", "/a")],
                 DoorReason.AMBIGUOUS_FORWARDED_REQUEST, id="repeated-method"),
    pytest.param([("X-Original-Method", "GET"), ("X-Original-URI", "/a"),
                  ("X-Original-URI", "/b")],
                 DoorReason.AMBIGUOUS_FORWARDED_REQUEST, id="repeated-uri"),
    pytest.param([("X-Original-Method", "GET"), ("X_Original_URI", "/a")],
                 DoorReason.AMBIGUOUS_FORWARDED_REQUEST, id="underscore-spelling"),
    pytest.param([("X-Forwarded.Method", "GET"), ("X-Forwarded-Uri", "/a")],
                 DoorReason.AMBIGUOUS_FORWARDED_REQUEST, id="dot-spelling"),
    pytest.param([("X-Original-Method", "GET, DELETE"), ("X-Original-URI", "/a")],
                 DoorReason.AMBIGUOUS_FORWARDED_REQUEST, id="merged-methods"),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "expected"), FORWARDED_HEADERS)
def test_forwarded_request_is_read_from_exactly_one_family(
    headers: list[tuple[str, str]], expected: object
) -> None:
    """The original method and target come from one header family, each header once;
    anything else is a named refusal, and a missing method is never taken as GET."""
    from multidict import CIMultiDict

    assert forwarded_request(CIMultiDict(headers)) == expected


def test_door_reasons_are_in_the_one_closed_set() -> None:
    """The decision service's refusals are reasons like any other (metrics, audit, JSON)."""
    assert {str(r) for r in DoorReason} <= ALL_REASONS
    assert {str(r) for r in DoorReason} == {
        "missing_forwarded_method",
        "missing_forwarded_uri",
        "ambiguous_forwarded_request",
        "untrusted_proxy",
        "invalid_evaluation_request",
    }


# -- forward auth: answers ---------------------------------------------------------------

CHECKS = [
    pytest.param("alice", "POST", "/policy/acme-prod/quotes", 200, None, id="allowed"),
    pytest.param("alice-readonly", "POST", "/policy/acme-prod/quotes", 403, "missing_permission",
                 id="missing-permission"),
    pytest.param("alice", "GET", "/policy/globex-prod/quotes/q1", 403, "tenant_out_of_scope",
                 id="other-account"),
    pytest.param(None, "GET", "/policy/acme-prod/quotes/q1", 401, "missing_credentials",
                 id="no-credential"),
    pytest.param("alice", "GET", "/nowhere", 403, "unmapped_route", id="unmapped"),
    pytest.param("alice", "GET", "/policy/acme-prod/../x", 400, "ambiguous_path",
                 id="hygiene-dot-segment"),
    pytest.param("alice", "GET", "/policy/acme-prod%2fquotes/q1", 400, "ambiguous_path",
                 id="hygiene-encoded-slash"),
]  # fmt: skip


@pytest.mark.parametrize(("token", "method", "uri", "status", "reason"), CHECKS)
async def test_forward_auth_answers_like_the_gateway(
    dec: Decider,
    http: aiohttp.ClientSession,
    token: str | None,
    method: str,
    uri: str,
    status: int,
    reason: str | None,
) -> None:
    """/forward-auth answers the inline gateway's status and JSON reason for the
    original request, with the original target through the same hygiene."""
    headers = {"X-Original-Method": method, "X-Original-URI": uri}
    if token is not None:
        headers.update(bearer(dec.gw.tokens[token]))
    async with http.get(dec.url + "/forward-auth", headers=headers) as response:
        body = await response.read()
        assert response.status == status
        if reason is not None:
            assert response.content_type == "application/json"
            assert json.loads(body)["reason"] == reason
        else:
            assert body == b""


async def test_allowed_check_carries_every_identity_header(
    dec: Decider, http: aiohttp.ClientSession
) -> None:
    """A 200 names the principal, its kind, the tenant, the token and the request id."""
    headers = {
        "X-Forwarded-Method": "POST",
        "X-Forwarded-Uri": "/policy/acme-prod/quotes",
        "X-Request-Id": "req-1",
        **bearer(dec.gw.tokens["alice"]),
    }
    async with http.get(dec.url + "/forward-auth", headers=headers) as response:
        assert response.status == 200
        got = {name: response.headers.get(name) for name in IDENTITY}
    token_id = next(e["token_id"] for e in await dec.decisions() if e["door"] == "forward_auth")
    assert got == {
        "X-Permgate-Principal": "alice",
        "X-Permgate-Principal-Kind": "user",
        "X-Permgate-Tenant": "acme-prod",
        "X-Permgate-Token-Id": token_id,
        "X-Request-Id": "req-1",
    }


async def test_public_endpoint_gets_every_identity_header_empty(
    dec: Decider, http: aiohttp.ClientSession
) -> None:
    """Where no identity applies the headers are still there, empty, so a client's copy
    never survives a proxy that copies only what the check answered."""
    headers = {"X-Original-Method": "GET", "X-Original-URI": "/health"}
    async with http.get(dec.url + "/forward-auth", headers=headers) as response:
        assert response.status == 200
        assert all(name in response.headers for name in IDENTITY)
        assert response.headers["X-Permgate-Principal"] == ""
        assert response.headers["X-Permgate-Token-Id"] == ""


async def test_jwt_caller_has_an_empty_token_id(dec: Decider, http: aiohttp.ClientSession) -> None:
    """A JWT is no auth token: X-Permgate-Token-Id is present and empty."""
    headers = {
        "X-Original-Method": "POST",
        "X-Original-URI": "/policy/acme-prod/quotes",
        **bearer(dec.gw.jwt("alice")),
    }
    async with http.get(dec.url + "/forward-auth", headers=headers) as response:
        assert response.status == 200
        assert response.headers["X-Permgate-Token-Id"] == ""
        assert response.headers["X-Permgate-Principal"] == "alice"


@pytest.mark.parametrize(
    ("token", "uri", "status"),
    [
        pytest.param("alice", "/policy/acme-prod/quotes/q1", 200, id="allowed"),
        pytest.param("alice", "/policy/globex-prod/quotes/q1", 403, id="denied"),
    ],
)
async def test_a_check_answered_from_memory_is_the_first_answer_again(
    dec: Decider, http: aiohttp.ClientSession, token: str, uri: str, status: int
) -> None:
    """The second check of a credential is answered from memory, without waiting on
    anything: the same status, body and identity headers as the first, and audited
    the same way, as a cache hit."""
    headers = {"X-Request-Id": "same", **bearer(dec.gw.tokens[token])}
    answers = []
    for _ in range(2):
        async with http.get(dec.url + "/envoy" + uri, headers=headers) as response:
            identity = {name: response.headers.get(name) for name in IDENTITY}
            answers.append((response.status, await response.read(), identity))
    assert answers[0] == answers[1]
    assert answers[0][0] == status
    events = (await dec.decisions(2))[-2:]
    for event in events:
        assert (event["door"], event["status"], event["request_id"]) == ("envoy", status, "same")
    assert [event["cache_hit"] for event in events] == [False, True]
    varying = ("ts", "decision_id", "duration_ms", "cache_hit")
    first, second = ({k: v for k, v in e.items() if k not in varying} for e in events)
    assert first == second


async def test_a_check_the_store_cannot_answer_is_503_and_audited(
    dec: Decider, http: aiohttp.ClientSession
) -> None:
    """A credential not in memory while the store is unreachable: 503 store_unavailable
    in the gateway's JSON shape, never an allow, and audited as a deny."""
    await dec.gw.runtime.store.close()
    headers = {"X-Request-Id": "outage-1", **bearer(dec.gw.tokens["alice"])}
    async with http.get(dec.url + "/envoy/policy/acme-prod/quotes/q1", headers=headers) as response:
        assert response.status == 503
        assert response.headers["X-Request-Id"] == "outage-1"
        body = await response.json()
    assert (body["error"], body["reason"]) == ("unavailable", "store_unavailable")
    event = next(e for e in await dec.decisions() if e["request_id"] == "outage-1")
    assert (event["door"], event["status"]) == ("envoy", 503)
    assert (event["decision"], event["reason"]) == ("deny", "store_unavailable")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param({"X-Original-URI": "/health"}, "missing_forwarded_method", id="no-method"),
        pytest.param({"X-Original-Method": "GET"}, "missing_forwarded_uri", id="no-uri"),
        pytest.param(
            {"X-Original-Method": "GET", "X-Original-URI": "/health", "X-Forwarded-Method": "GET"},
            "ambiguous_forwarded_request",
            id="both-families",
        ),
    ],
)
async def test_forward_auth_configuration_errors_are_400(
    dec: Decider, http: aiohttp.ClientSession, headers: dict[str, str], reason: str
) -> None:
    """A check that does not name the original request exactly once is a 400 with
    the gateway's JSON shape, never an allow (a missing method is not GET)."""
    async with http.get(dec.url + "/forward-auth", headers=headers) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"] == "bad_request"
    assert body["reason"] == reason


async def test_shadow_tenant_deny_is_answered_as_allow(
    dec: Decider, http: aiohttp.ClientSession
) -> None:
    """On a tenant in shadow mode a deny is a 200 with the identity headers, recorded
    as shadow_deny in metrics and audit."""
    headers = {
        "X-Original-Method": "POST",
        "X-Original-URI": "/policy/acme-shadow/quotes/q1/issue",
        **bearer(dec.gw.tokens["alice"]),
    }
    async with http.get(dec.url + "/forward-auth", headers=headers) as response:
        assert response.status == 200
        assert response.headers["X-Permgate-Tenant"] == "acme-shadow"
    event = next(e for e in await dec.decisions() if e["door"] == "forward_auth")
    assert (event["decision"], event["reason"]) == ("shadow_deny", "missing_permission")


async def test_traceparent_is_echoed(dec: Decider, http: aiohttp.ClientSession) -> None:
    """traceparent and tracestate come back to the caller unchanged; the trace id is audited."""
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {
        "X-Original-Method": "GET",
        "X-Original-URI": "/health",
        "traceparent": traceparent,
        "tracestate": "vendor=1",
    }
    async with http.get(dec.url + "/forward-auth", headers=headers) as response:
        assert response.headers["traceparent"] == traceparent
        assert response.headers["tracestate"] == "vendor=1"
    assert (await dec.decisions())[-1]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


# -- the Envoy door --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "status", "reason"),
    [
        pytest.param("POST", "/policy/acme-prod/quotes", 200, None, id="allowed"),
        pytest.param("GET", "/policy/acme-prod/quotes/q1?x=1", 200, None, id="with-query"),
        pytest.param("DELETE", "/policy/acme-prod/quotes", 403, "unmapped_route", id="method"),
        pytest.param("GET", "/policy/acme-prod/quotes/..;/q1", 400, "ambiguous_path", id="dots"),
    ],
)
async def test_envoy_door_uses_the_original_method_and_path(
    dec: Decider,
    http: aiohttp.ClientSession,
    method: str,
    target: str,
    status: int,
    reason: str | None,
) -> None:
    """/envoy/<path> is the original request: its method, path and query, its headers."""
    url = dec.url + "/envoy" + target
    async with http.request(
        method, url, headers=bearer(dec.gw.tokens["alice"]), skip_auto_headers={"Content-Type"}
    ) as response:
        assert response.status == status
        if reason is not None:
            assert (await response.json())["reason"] == reason
        else:
            assert response.headers["X-Permgate-Principal"] == "alice"


# -- trusted proxies -------------------------------------------------------------------


async def test_untrusted_peer_is_refused(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """A peer outside authz_trusted_proxies gets 403 untrusted_proxy on both proxy
    doors, whatever it claims: its forwarded headers are never read."""
    async for dec in _decider(tmp_path, authz_trusted_proxies=["10.0.0.0/8"]):
        headers = {
            "X-Original-Method": "POST",
            "X-Original-URI": "/policy/acme-prod/quotes",
            **bearer(dec.gw.tokens["alice"]),
        }
        async with http.get(dec.url + "/forward-auth", headers=headers) as response:
            assert response.status == 403
            assert (await response.json())["reason"] == "untrusted_proxy"
        url = dec.url + "/envoy/policy/acme-prod/quotes"
        async with http.post(url, headers=bearer(dec.gw.tokens["alice"])) as response:
            assert response.status == 403
            assert (await response.json())["reason"] == "untrusted_proxy"
        assert [e["reason"] for e in await dec.decisions(2)] == ["untrusted_proxy"] * 2


# -- AuthZEN ---------------------------------------------------------------------------


def evaluation(subject: str, method: str, route: str, **headers: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": {"type": "user", "id": subject},
        "action": {"name": method},
        "resource": {"type": "route", "id": route},
    }
    if headers:
        body["context"] = {"headers": headers}
    return body


AUTHZEN = [
    pytest.param(evaluation("alice", "POST", "/policy/acme-prod/quotes"), {"decision": True},
                 id="allowed"),
    pytest.param(evaluation("bob", "POST", "/policy/acme-prod/quotes"),
                 {"decision": False, "context": {"reason": "missing_permission",
                                                 "missing_permissions": ["quotes.write"]}},
                 id="missing-permission"),
    pytest.param(evaluation("bob", "GET", "/legacy/quotes", **{"X-Tenant": "acme-prod"}),
                 {"decision": True}, id="tenant-header-in-context"),
    pytest.param(evaluation("alice", "GET", "/policy/globex-prod/quotes/q"),
                 {"decision": False, "context": {"reason": "tenant_out_of_scope"}},
                 id="tenant-of-another-account"),
    pytest.param(evaluation("gus", "GET", "/policy/globex-prod/quotes/q"),
                 {"decision": False, "context": {"reason": "tenant_out_of_scope"}},
                 id="subject-of-another-account"),
    pytest.param(evaluation("nobody", "GET", "/policy/acme-prod/quotes/q"),
                 {"decision": False, "context": {"reason": "tenant_out_of_scope"}},
                 id="unknown-subject-same-answer"),
    pytest.param({**evaluation("alice", "GET", "/policy/acme-prod/quotes/q"),
                  "subject": {"type": "client", "id": "alice"}},
                 {"decision": False, "context": {"reason": "tenant_out_of_scope"}},
                 id="wrong-kind"),
    pytest.param(evaluation("alice", "POST", "/policy/acme-shadow/quotes/q/issue"),
                 {"decision": True}, id="shadow-deny-is-true"),
    pytest.param(evaluation("alice", "GET", "/policy/acme-prod/%2e%2e/q"),
                 {"decision": False, "context": {"reason": "ambiguous_path"}}, id="hygiene"),
    pytest.param(evaluation("alice", "GET", "/policy/acme-prod/quotes/q",
                            Authorization="Bearer x"),
                 {"decision": True}, id="context-credential-ignored"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "expected"), AUTHZEN)
async def test_authzen_evaluation(
    dec: Decider, http: aiohttp.ClientSession, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    """An authorised caller always gets 200 and the subject's decision; nothing outside
    its account is told apart from the unknown."""
    url = dec.url + "/access/v1/evaluation"
    async with http.post(url, json=body, headers=bearer(dec.evaluator_token)) as response:
        assert response.status == 200
        assert await response.json() == expected
    event = (await dec.decisions())[-1]
    assert event["door"] == "authzen"
    assert "asked by app" in event["detail"]


async def test_authzen_batch_applies_defaults_and_counts_each(
    dec: Decider, http: aiohttp.ClientSession
) -> None:
    """/evaluations merges the top-level subject/action/resource into each entry and
    answers in order; each entry is one decision in metrics and audit."""
    body = {
        "subject": {"type": "user", "id": "alice"},
        "resource": {"type": "route", "id": "/policy/acme-prod/quotes"},
        "evaluations": [
            {"action": {"name": "POST"}},
            {"action": {"name": "DELETE"}},
            {"subject": {"type": "user", "id": "bob"}, "action": {"name": "POST"}},
        ],
    }
    url = dec.url + "/access/v1/evaluations"
    async with http.post(url, json=body, headers=bearer(dec.evaluator_token)) as response:
        assert response.status == 200
        answers = (await response.json())["evaluations"]
    assert [a["decision"] for a in answers] == [True, False, False]
    assert answers[1]["context"]["reason"] == "unmapped_route"
    authzen = [e for e in await dec.decisions(3) if e["door"] == "authzen"]
    assert [e["reason"] for e in authzen] == ["allowed", "unmapped_route", "missing_permission"]


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        pytest.param({}, 401, "missing_credentials", id="no-credential"),
        pytest.param("alice", 403, "missing_permission", id="without-decisions-evaluate"),
    ],
)
async def test_authzen_caller_must_hold_decisions_evaluate(
    dec: Decider,
    http: aiohttp.ClientSession,
    headers: dict[str, str] | str,
    status: int,
    reason: str,
) -> None:
    """The caller authenticates and needs decisions.evaluate, else the gateway's 401/403."""
    sent = bearer(dec.gw.tokens[headers]) if isinstance(headers, str) else headers
    body = evaluation("alice", "POST", "/policy/acme-prod/quotes")
    async with http.post(dec.url + "/access/v1/evaluation", json=body, headers=sent) as response:
        assert response.status == status
        assert (await response.json())["reason"] == reason


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(b"[]", "the body must be a JSON object", id="not-object"),
        pytest.param(b"{", "the body is not a JSON object", id="not-json"),
        pytest.param(json.dumps({"subject": {"type": "user", "id": "alice"}}).encode(),
                     "action: must be an object", id="no-action"),
        pytest.param(json.dumps({**evaluation("alice", "GET", "/x"),
                                 "resource": {"type": "file", "id": "/x"}}).encode(),
                     "resource.type: must be route", id="not-a-route"),
    ],
)  # fmt: skip
async def test_authzen_bad_body_is_one_clear_400(
    dec: Decider, http: aiohttp.ClientSession, body: bytes, detail: str
) -> None:
    """A body that does not say what to evaluate is a 400 naming what is wrong."""
    url = dec.url + "/access/v1/evaluation"
    headers = {**bearer(dec.evaluator_token), "Content-Type": "application/json"}
    async with http.post(url, data=body, headers=headers) as response:
        assert response.status == 400
        answer = await response.json()
    assert answer["reason"] == "invalid_evaluation_request"
    assert answer["detail"] == detail


# -- metrics, audit, listeners -----------------------------------------------------------


async def test_every_door_counts_once_and_audits_its_door(
    dec: Decider, http: aiohttp.ClientSession
) -> None:
    """One answer through each door is one count in permgate_decisions_total and one
    decision event naming its door; the inline gateway's events say inline."""
    alice = bearer(dec.gw.tokens["alice"])
    async with http.post(dec.gw.url + "/policy/acme-prod/quotes", headers=alice) as r:
        assert r.status == 200
    async with http.post(dec.url + "/envoy/policy/acme-prod/quotes", headers=alice) as r:
        assert r.status == 200
    fa = {"X-Original-Method": "POST", "X-Original-URI": "/policy/acme-prod/quotes", **alice}
    async with http.get(dec.url + "/forward-auth", headers=fa) as r:
        assert r.status == 200
    body = evaluation("alice", "POST", "/policy/acme-prod/quotes")
    async with http.post(
        dec.url + "/access/v1/evaluation", json=body, headers=bearer(dec.evaluator_token)
    ) as r:
        assert r.status == 200
    assert [e["door"] for e in await dec.decisions(4)] == [
        "inline",
        "envoy",
        "forward_auth",
        "authzen",
    ]
    async with http.get(dec.gw.admin_url + "/metrics") as r:
        metrics = await r.text()
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("permgate_decisions_total{")
        and 'endpoint="quotes.create"' in line
        and 'decision="allow"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) == 4.0


async def test_decision_cache_is_shared_with_the_gateway(
    dec: Decider, http: aiohttp.ClientSession
) -> None:
    """A decision the inline gateway made is a cache hit for the Envoy door."""
    alice = bearer(dec.gw.tokens["alice"])
    async with http.post(dec.gw.url + "/policy/acme-prod/quotes", headers=alice) as r:
        assert r.status == 200
    async with http.post(dec.url + "/envoy/policy/acme-prod/quotes", headers=alice) as r:
        assert r.status == 200
    assert [e["cache_hit"] for e in await dec.decisions(2)] == [False, True]


async def test_decision_only_mode_serves_no_gateway(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With listen omitted there is no gateway listener; /readyz checks the decision
    listener instead, and decisions are answered."""
    async for dec in _decider(tmp_path, listen=None):
        async with http.get(dec.gw.admin_url + "/readyz") as response:
            assert response.status == 200
            checks = (await response.json())["checks"]
        assert checks == {"endpoint_map": True, "store": True, "decision_listener": True}
        headers = {"X-Original-Method": "GET", "X-Original-URI": "/health"}
        async with http.get(dec.url + "/forward-auth", headers=headers) as response:
            assert response.status == 200
        assert dec.gw.runtime.settings.listen is None


CONFIGS = [
    pytest.param({"authz_listen": "127.0.0.1:9191"}, None, id="decision-only"),
    pytest.param({"authz_listen": "9191"}, "authz_listen", id="bare-port"),
    pytest.param({"authz_trusted_proxies": ["10.0.0.0/33"]}, "authz_trusted_proxies",
                 id="bad-cidr"),
    pytest.param({"listen": None}, "nothing to serve", id="no-listener"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "problem"), CONFIGS)
def test_decision_service_config(overrides: dict[str, Any], problem: str | None) -> None:
    """authz_listen is HOST:PORT; with it, listen may be omitted (decision only); the
    trusted proxies are CIDRs; some listener is required."""
    if problem is None:
        settings = load_settings(env={}, overrides=overrides)
        assert settings.listen is None
        assert settings.authz_trusted_proxies == ("127.0.0.0/8", "::1/128")
        return
    with pytest.raises(ConfigError) as raised:
        load_settings(env={}, overrides=overrides)
    assert problem in str(raised.value)


def test_decision_listener_address_must_be_its_own(tmp_path: Path) -> None:
    """authz_listen on the gateway's address is refused with one line naming both keys."""
    from permgate.runtime.listeners import bind_listeners

    settings = load_settings(
        env={}, overrides={"listen": "127.0.0.1:9393", "authz_listen": "127.0.0.1:9393"}
    )
    with pytest.raises(ConfigError) as raised:
        bind_listeners(settings)
    assert "authz_listen 127.0.0.1:9393: the same address as listen" in str(raised.value)


async def test_unreadable_request_is_refused_without_echo(dec: Decider) -> None:
    """A request the decision listener cannot parse gets the gateway's JSON 400 (never
    aiohttp's text answer quoting the request bytes), audited with door null."""
    from rawhttp import exchange

    host, port = dec.url.removeprefix("http://").rsplit(":", 1)
    secret = dec.gw.tokens["alice"]
    data = (
        "GET /forward-auth HTTP/1.1\r\nHost: t\r\n"
        f"Authorization : Bearer {secret}\r\n\r\n"  # "Name :" is refused by the parser
    ).encode()
    answer = await exchange(host, int(port), data)
    assert answer.status == 400
    assert json.loads(answer.body)["reason"] == "malformed_request"
    assert secret.encode() not in answer.raw
    event = (await dec.decisions())[-1]
    assert (event["door"], event["reason"]) == (None, "malformed_request")
