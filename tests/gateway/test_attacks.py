"""Attacks on a real gateway on loopback: each test is one attempt to get around
permgate (authorization bypass, tenant or route confusion, request smuggling,
credential tricks, identity spoofing, shadow abuse, admin escalation, leaks) and
asserts that it fails closed: the decision order, authentication, request hygiene
and the admin API's rules hold.

Raw bytes (tests/support/rawhttp.py) are used wherever a client library would normalise
what the attack depends on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
import yarl
from multidict import CIMultiDict

from harness import Gateway, eventually, free_port, start_gateway
from permgate.manage.service import Actor
from rawhttp import RawResponse, exchange, read_response, request

CLI = Actor.cli()


# --------------------------------------------------------------------------- helpers


def _address(gw: Gateway) -> tuple[str, int]:
    url = yarl.URL(gw.url)
    assert url.host is not None and url.port is not None
    return url.host, url.port


def _admin_address(gw: Gateway) -> tuple[str, int]:
    url = yarl.URL(gw.admin_url)
    assert url.host is not None and url.port is not None
    return url.host, url.port


def _bearer(secret: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {secret}")


async def _raw(
    gw: Gateway, method: str, target: str, *headers: tuple[str, str], body: bytes = b""
) -> RawResponse:
    host, port = _address(gw)
    return await exchange(host, port, request(method, target, [("Host", "gw"), *headers], body))


def _json(response: RawResponse) -> dict[str, Any]:
    data = orjson.loads(response.body)
    assert isinstance(data, dict)
    return data


async def _pipelined(gw: Gateway, data: bytes, answers: int) -> list[RawResponse]:
    """Write ``data`` in one write (one TCP segment on loopback); read ``answers``
    answers, or fewer if the gateway closes the connection first."""
    host, port = _address(gw)
    reader, writer = await asyncio.open_connection(host, port)
    out: list[RawResponse] = []
    try:
        writer.write(data)
        await writer.drain()
        for _ in range(answers):
            try:
                out.append(await asyncio.wait_for(read_response(reader), timeout=2))
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                break
    finally:
        writer.close()
    return out


def _seen_paths(gw: Gateway) -> list[str]:
    return [seen["raw_path"] for seen in gw.upstream.seen]


def _upstream_headers(gw: Gateway) -> CIMultiDict[str]:
    headers = gw.upstream.seen[-1]["headers"]
    assert isinstance(headers, dict)
    return CIMultiDict(headers)


async def _admin(
    http: aiohttp.ClientSession,
    gw: Gateway,
    method: str,
    path: str,
    secret: str,
    body: object = None,
) -> tuple[int, dict[str, Any]]:
    kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {secret}"}}
    if body is not None:
        kwargs["data"] = orjson.dumps(body)
        kwargs["headers"]["Content-Type"] = "application/json"
    async with http.request(method, gw.admin_url + path, **kwargs) as response:
        raw = await response.read()
        data = orjson.loads(raw) if raw else {}
        return response.status, data


async def _token_for(gw: Gateway, owner: str, permissions: list[str], tenants: list[str]) -> str:
    _, secret = await gw.service.create_token(CLI, owner, "attack", permissions, tenants)
    return secret


# =========================================================================== routing


@pytest.mark.parametrize(
    "target",
    [
        "/policy/acme-prod/quotes/",  # POST-only collection, with a trailing slash
        "/Policy/acme-prod/quotes/Q-1",  # case variant of the literal
        "/POLICY/acme-prod/quotes/Q-1",
        "/policy/acme-prod/Quotes/Q-1",
        "/policy/acme-prod/quotes/Q-1/",  # trailing slash after a parameter
        "/policy/acme-prod/quotes/Q-1/issue/extra",
        "/policy/acme-prod",  # a prefix of a template
    ],
    ids=["collection-slash", "case-1", "case-2", "case-3", "param-slash", "longer", "prefix"],
)
async def test_route_variants_fail_closed(gw: Gateway, target: str) -> None:
    """A path that an upstream might route like a mapped one (trailing slash, other
    case, extra segment) but that matches no entry exactly is 403 unmapped_route —
    even for a caller who holds every permission, so no variant slips past a rule."""
    response = await _raw(gw, "GET", target, _bearer(gw.tokens["bob"]))
    assert (response.status, _json(response)["reason"]) == (403, "unmapped_route")
    assert gw.upstream.seen == []


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/policy/acme%2Dprod/quotes/Q-1", 400),  # encoded unreserved: a second reading
        ("/policy/globex%2dprod/quotes/Q-1", 400),
        ("/policy/acme-prod%00/quotes/Q-1", 400),
        ("/policy/acme-prod%2F..%2Fglobex-prod/quotes/Q-1", 400),
        ("/policy/acme-prod%20/quotes/Q-1", 403),  # decodes to 'acme-prod ': no tenant
        ("/policy/ACME-PROD/quotes/Q-1", 403),  # another case: no tenant
        ("/policy/%EF%BD%81cme-prod/quotes/Q-1", 400),  # fullwidth 'a' folds to 'a' (NFKC)
        ("/policy/acme-prod%3Bglobex-prod/quotes/Q-1", 400),
    ],
    ids=[
        "enc-dash",
        "enc-dash-lower",
        "enc-nul",
        "enc-traversal",
        "enc-space",
        "upper",
        "fullwidth",
        "enc-semicolon",
    ],
)
async def test_tenant_segment_encodings_cannot_name_another_tenant(
    gw: Gateway, target: str, status: int
) -> None:
    """carol... no: alice (scope acme-prod, acme-shadow) tries spellings of a tenant
    segment that the upstream might decode or fold to a tenant the decision did not
    check. Each is refused (400 ambiguous, or 403 for a name that is no tenant)."""
    response = await _raw(gw, "GET", target, _bearer(gw.tokens["alice"]))
    assert response.status == status, response.text
    if status == 403:
        assert _json(response)["reason"] == "tenant_out_of_scope"
    assert gw.upstream.seen == []


async def test_head_is_authorized_as_get(gw: Gateway) -> None:
    """HEAD on a GET route needs the GET route's permissions: a token without
    quotes.read cannot HEAD a quote, and HEAD on a POST-only path is unmapped."""
    token = await _token_for(gw, "alice", ["quotes.write"], ["acme-prod"])
    host, port = _address(gw)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            request("HEAD", "/policy/acme-prod/quotes/Q-1", [("Host", "gw"), _bearer(token)])
        )
        await writer.drain()
        answer = await asyncio.wait_for(read_response(reader, head=True), timeout=5)
        assert answer.status == 403
        writer.write(request("HEAD", "/policy/acme-prod/quotes", [("Host", "gw"), _bearer(token)]))
        await writer.drain()
        answer = await asyncio.wait_for(read_response(reader, head=True), timeout=5)
        assert answer.status == 403
    finally:
        writer.close()
    assert gw.upstream.seen == []


@pytest.mark.parametrize(
    "name",
    [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "X_HTTP_Method_Override",
        "x-original-url",
        "X-Original-URI",
        "X-Rewrite-URL",
        "X-Forwarded-Uri",
        "X-Forwarded-Path",
        "X-Forwarded-Prefix",
        "X-Envoy-Original-Path",
    ],
)
async def test_method_and_url_override_headers_never_reach_the_upstream(
    gw: Gateway, name: str
) -> None:
    """An allowed GET carrying a header some framework reads as 'really DELETE' or
    'really /admin' arrives upstream without it."""
    value = "DELETE" if "ethod" in name else "/policy/acme-prod/quotes/Q-1/issue"
    response = await _raw(
        gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(gw.tokens["bob"]), (name, value)
    )
    assert response.status == 200
    headers = _upstream_headers(gw)
    assert all(v != value for v in headers.values()), headers
    assert gw.upstream.seen[-1]["method"] == "GET"


@pytest.mark.parametrize(
    "target",
    ["http://gw/policy/acme-prod/quotes/Q-1", "HTTP://127.0.0.1/health", "//gw/health"],
    ids=["absolute", "absolute-upper-scheme", "network-path"],
)
async def test_absolute_and_network_path_targets_are_refused(gw: Gateway, target: str) -> None:
    """A request-target naming an authority is never routed (the upstream could
    read the path differently from the decision)."""
    response = await _raw(gw, "GET", target, _bearer(gw.tokens["bob"]))
    assert response.status == 400
    assert gw.upstream.seen == []


# =========================================================================== smuggling


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
        [("Transfer-Encoding", "chunked"), ("Content-Length", "4")],
        [("Content-Length", "4"), ("Content-Length", "40")],
        [("Transfer-Encoding", "chunked, identity")],
        [("Transfer-Encoding", "identity"), ("Transfer-Encoding", "chunked")],
        [("Transfer-Encoding", "xchunked")],
        [("Transfer-Encoding", " chunked"), ("Transfer-Encoding", "chunked")],
        [("Content-Length", "-1")],
        [("Content-Length", "4 4")],
    ],
    ids=["cl-te", "te-cl", "cl-cl", "te-list", "te-te", "te-bogus", "te-dup", "cl-neg", "cl-space"],
)
async def test_conflicting_framing_is_refused(gw: Gateway, headers: list[tuple[str, str]]) -> None:
    """CL.TE / TE.CL / CL.CL framing conflicts with a smuggled request in the body are
    refused with 400 and nothing reaches the upstream."""
    smuggled = b"0\r\n\r\nGET /policy/globex-prod/quotes/Q-1 HTTP/1.1\r\nHost: gw\r\n\r\n"
    responses = await _pipelined(
        gw,
        request(
            "POST",
            "/policy/acme-prod/quotes",
            [("Host", "gw"), _bearer(gw.tokens["alice"]), *headers],
            smuggled,
        ),
        2,
    )
    assert responses and responses[0].status == 400
    assert all(r.status in (400, 401, 403) for r in responses)
    assert gw.upstream.seen == []


async def test_denied_request_then_pipelined_request_in_the_same_packet(gw: Gateway) -> None:
    """A denied POST whose body looks like a second request, followed in the same TCP
    write by a real second request without credentials: the body is framed by its
    Content-Length (never parsed as a request), the second request is decided on its
    own (401), and nothing reaches the upstream."""
    inner = (
        b"POST /policy/globex-prod/quotes HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer " + gw.tokens["gus"].encode() + b"\r\nContent-Length: 0\r\n\r\n"
    )
    first = request(
        "POST",
        "/policy/globex-prod/quotes",
        [("Host", "gw"), _bearer(gw.tokens["alice"]), ("Content-Length", str(len(inner)))],
        inner,
    )
    second = request("GET", "/policy/acme-prod/quotes/Q-1", [("Host", "gw")])
    responses = await _pipelined(gw, first + second, 3)
    assert [r.status for r in responses] == [403, 401]
    assert gw.upstream.seen == []


async def test_pipelined_allowed_then_denied_keeps_each_decision(gw: Gateway) -> None:
    """Allowed, then a denied request on the same connection and packet: the second is
    decided with its own credential (none inherited from the connection)."""
    first = request(
        "GET", "/policy/acme-prod/quotes/Q-1", [("Host", "gw"), _bearer(gw.tokens["alice"])]
    )
    second = request("GET", "/policy/globex-prod/quotes/Q-1", [("Host", "gw")])
    third = request(
        "GET", "/policy/globex-prod/quotes/Q-1", [("Host", "gw"), _bearer(gw.tokens["alice"])]
    )
    responses = await _pipelined(gw, first + second + third, 3)
    assert [r.status for r in responses] == [200, 401, 403]
    assert _seen_paths(gw) == ["/policy/acme-prod/quotes/Q-1"]


async def test_get_with_a_body_holding_a_request_is_forwarded_as_one_request(
    gw: Gateway,
) -> None:
    """An allowed GET with a Content-Length body that is itself a request: the upstream
    receives one request whose body is those bytes, never a second request."""
    inner = b"DELETE /policy/acme-prod/quotes/Q-1 HTTP/1.1\r\nHost: gw\r\n\r\n"
    response = await _raw(
        gw,
        "GET",
        "/policy/acme-prod/quotes/Q-1",
        _bearer(gw.tokens["bob"]),
        ("Content-Length", str(len(inner))),
        body=inner,
    )
    assert response.status == 200
    await asyncio.sleep(0.2)
    assert [(s["method"], s["raw_path"]) for s in gw.upstream.seen] == [
        ("GET", "/policy/acme-prod/quotes/Q-1")
    ]
    assert gw.upstream.seen[0]["body"] == inner.decode()


@pytest.mark.parametrize("upgrade", ["h2c", "websocket"])
async def test_upgrade_tunnel_cannot_smuggle_a_second_request(gw: Gateway, upgrade: str) -> None:
    """h2c/websocket smuggling: an allowed request asking to upgrade, followed by a
    request for a tenant out of scope in the 'tunnel'. The upstream never sees the
    Upgrade, and never sees the second request."""
    first = request(
        "GET",
        "/policy/acme-prod/quotes/Q-1",
        [
            ("Host", "gw"),
            _bearer(gw.tokens["alice"]),
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", upgrade),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    second = request("GET", "/policy/globex-prod/quotes/Q-1", [("Host", "gw")])
    responses = await _pipelined(gw, first + second, 2)
    assert responses and responses[0].status in (200, 400, 403)
    assert all(r.status != 101 for r in responses)
    await asyncio.sleep(0.2)
    assert "/policy/globex-prod/quotes/Q-1" not in _seen_paths(gw)
    for seen in gw.upstream.seen:
        assert "Upgrade" not in CIMultiDict(seen["headers"])


async def test_denied_expect_continue_gets_no_100_and_no_forwarding(gw: Gateway) -> None:
    """A denied upload with Expect: 100-continue is answered 403 at once; the gateway
    never invites the body, and nothing reaches the upstream."""
    host, port = _address(gw)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            request(
                "POST",
                "/policy/globex-prod/quotes",
                [
                    ("Host", "gw"),
                    _bearer(gw.tokens["alice"]),
                    ("Expect", "100-continue"),
                    ("Content-Length", "5"),
                ],
            )
        )
        await writer.drain()
        answer = await asyncio.wait_for(read_response(reader), timeout=5)
        assert answer.status == 403
    finally:
        writer.close()
    assert gw.upstream.seen == []


# =========================================================================== credentials


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: s + "x", "invalid_token"),
        (lambda s: s[:-1], "invalid_token"),
        (lambda s: s[:-1] + ("A" if s[-1] != "A" else "B"), "invalid_token"),
        (lambda s: s.upper(), "invalid_token"),
        (lambda s: "PGT_" + s[4:], "invalid_token"),
        (lambda s: s.replace("_", "-", 1), "invalid_token"),
        (lambda s: s + "\xe2\x80\x8b", None),  # UTF-8 zero-width space: 400 or 401
        (lambda s: s.split("_")[0] + "_" + s.split("_")[1], "invalid_token"),  # id only
    ],
    ids=["suffix", "truncated", "last-char", "upper", "prefix-case", "dash", "zwsp", "id-only"],
)
async def test_token_secret_variants_are_refused(
    gw: Gateway, make: Any, reason: str | None
) -> None:
    """Near-misses of a real secret (same token id, altered secret) never authenticate."""
    variant = make(gw.tokens["bob"])
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(variant))
    assert response.status in ((401,) if reason else (400, 401)), response.text
    if reason is not None:
        assert _json(response)["reason"] == reason
    assert gw.upstream.seen == []


@pytest.mark.parametrize(
    "value",
    [
        "Bearer\t{s}",
        "Bearer{s}",
        "Basic {s}",
        "Token {s}",
        "{s}",
        "Bearer {s}, Bearer {other}",
        "Bearer {other} {s}",
    ],
    ids=["tab", "no-space", "basic", "token-scheme", "bare", "list", "two-credentials"],
)
async def test_authorization_header_shapes_that_are_not_one_bearer_credential(
    gw: Gateway, value: str
) -> None:
    """Only 'Bearer <one credential>' authenticates; other shapes are 401."""
    header = value.format(s=gw.tokens["bob"], other=gw.tokens["alice"])
    response = await _raw(gw, "GET", "/policy/globex-prod/quotes/Q-1", ("Authorization", header))
    assert response.status in (400, 401), response.text
    assert gw.upstream.seen == []


@pytest.mark.parametrize(
    "pair",
    [
        ("Authorization", "authorization"),
        ("Authorization", "AUTHORIZATION"),
        ("Authorization", "Authorization"),
    ],
    ids=["lower", "upper", "same"],
)
async def test_two_authorization_headers_are_refused(gw: Gateway, pair: tuple[str, str]) -> None:
    """A weak credential first and a strong one second (or the reverse): which one would
    the upstream or another hop read? Refused with 400 either way."""
    response = await _raw(
        gw,
        "GET",
        "/policy/acme-prod/quotes/Q-1",
        (pair[0], f"Bearer {gw.tokens['alice-readonly']}"),
        (pair[1], f"Bearer {gw.tokens['root']}"),
    )
    assert (response.status, _json(response)["reason"]) == (400, "duplicate_header")
    assert gw.upstream.seen == []


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: Mapping[str, object], header: Mapping[str, object]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def _claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": "root",
        "iss": "https://idp.test/",
        "aud": "insurance-api",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(extra)
    return claims


async def test_jwt_alg_none_is_refused(gw: Gateway) -> None:
    """An unsigned JWT ('alg: none', any case) naming the admin is refused."""
    for alg in ("none", "None", "NONE"):
        token = _unsigned(_claims(), {"alg": alg, "typ": "JWT"})
        response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
        assert (response.status, _json(response)["reason"]) == (401, "invalid_token")
    assert gw.upstream.seen == []


async def test_jwt_hmac_with_the_public_key_is_refused(gw: Gateway) -> None:
    """Key confusion: HS256 'signed' with the IdP's public key PEM is refused."""
    from cryptography.hazmat.primitives import serialization

    pem = gw.jwt_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    import hashlib
    import hmac

    signature = _b64(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    token = f"{header}.{payload}.{signature}"
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
    assert (response.status, _json(response)["reason"]) == (401, "invalid_token")
    assert gw.upstream.seen == []


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "expired_token"),
        ({"aud": "other-api"}, "invalid_token"),
        ({"iss": "https://evil.test/"}, "invalid_token"),
        ({"nbf": int(time.time()) + 3600}, "invalid_token"),
        ({"iat": int(time.time()) + 3600}, "invalid_token"),
        ({"sub": "gus"}, None),  # another account's admin: authenticates, then 403
        ({"sub": ["root"]}, "invalid_token"),
        ({"sub": "nobody"}, "unknown_principal"),
        ({"sub": "carol"}, "disabled_principal"),
    ],
    ids=[
        "expired",
        "aud",
        "iss",
        "nbf",
        "iat-future",
        "other-account",
        "sub-list",
        "unknown",
        "disabled",
    ],
)
async def test_jwt_claim_tricks(gw: Gateway, claims: dict[str, object], reason: str | None) -> None:
    """Properly signed JWTs whose claims must not let the bearer onto acme-prod."""
    token = gw.jwt("root", **claims)
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
    if reason is None:
        assert (response.status, _json(response)["reason"]) == (403, "tenant_out_of_scope")
    else:
        assert (response.status, _json(response)["reason"]) == (401, reason)
    assert gw.upstream.seen == []


async def test_jwt_without_exp_is_refused(gw: Gateway) -> None:
    """A signed JWT without exp would never expire: refused."""
    now = int(time.time())
    token = jwt.encode(
        {"sub": "root", "iss": "https://idp.test/", "aud": "insurance-api", "iat": now},
        gw.jwt_key,
        algorithm="RS256",
    )
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
    assert (response.status, _json(response)["reason"]) == (401, "invalid_token")


async def test_jwt_signed_by_another_key_is_refused(gw: Gateway) -> None:
    """A JWT with the right claims but signed by an attacker's RSA key is refused,
    whatever kid it names."""
    from harness import rsa_key

    key, _ = rsa_key()
    for headers in ({}, {"kid": "1"}, {"kid": "../../etc/passwd"}):
        token = jwt.encode(_claims(), key, algorithm="RS256", headers=headers)
        response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
        assert (response.status, _json(response)["reason"]) == (401, "invalid_token")


async def test_token_of_another_account_gets_the_unknown_tenant_answer(gw: Gateway) -> None:
    """globex's admin token (*.*, any) on an acme tenant: 403 tenant_out_of_scope, the
    same body as for a tenant that does not exist."""
    other = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(gw.tokens["gus"]))
    unknown = await _raw(gw, "GET", "/policy/no-such/quotes/Q-1", _bearer(gw.tokens["gus"]))
    assert other.status == unknown.status == 403
    a, b = _json(other), _json(unknown)
    a.pop("request_id"), b.pop("request_id")
    assert (
        a
        == b
        == {
            "error": "forbidden",
            "reason": "tenant_out_of_scope",
            "missing_permissions": [],
        }
    )
    assert gw.upstream.seen == []


async def test_revoked_token_is_not_served_from_the_decision_cache(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """A token allowed (and cached) a moment ago, then revoked through the admin API, is
    401 revoked_token on its very next request."""
    token = await _token_for(gw, "bob", ["quotes.read"], ["any"])
    for _ in range(2):
        response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
        assert response.status == 200
    token_id = token.removeprefix("pgt_").split("_")[0]
    status, _ = await _admin(http, gw, "DELETE", f"/v1/tokens/{token_id}", gw.tokens["root"])
    assert status == 200
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
    assert (response.status, _json(response)["reason"]) == (401, "revoked_token")


async def test_expired_token_is_not_served_from_the_decision_cache(gw: Gateway) -> None:
    """A token with a one-second life, allowed and cached, is 401 once it expired."""
    _, token = await gw.service.create_token(
        CLI, "bob", "short", ["quotes.read"], ["any"], expires_in=1
    )
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
    assert response.status == 200
    await asyncio.sleep(1.2)
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
    assert (response.status, _json(response)["reason"]) == (401, "expired_token")


async def test_disabled_owner_is_not_served_from_the_decision_cache(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """bob's cached allow ends the moment an admin disables bob."""
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(gw.tokens["bob"]))
    assert response.status == 200
    status, _ = await _admin(
        http, gw, "PATCH", "/v1/principals/bob", gw.tokens["root"], {"disabled": True}
    )
    assert status == 200
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(gw.tokens["bob"]))
    assert (response.status, _json(response)["reason"]) == (401, "disabled_principal")


async def test_token_scope_is_narrower_than_its_owner(gw: Gateway) -> None:
    """alice-readonly (quotes.read on acme-prod) cannot use alice's quotes.write nor
    alice's acme-shadow scope... except that shadow forwards denials by design, so the
    write attempt on acme-prod is the one that must fail."""
    response = await _raw(
        gw, "POST", "/policy/acme-prod/quotes", _bearer(gw.tokens["alice-readonly"])
    )
    assert (response.status, _json(response)["reason"]) == (403, "missing_permission")
    assert gw.upstream.seen == []


# =========================================================================== tenants


async def test_duplicate_or_underscore_tenant_header_is_refused(gw: Gateway) -> None:
    """Header tenant: two X-Tenant values, or X-Tenant plus X_Tenant, could be read as
    different tenants by the decision and the upstream: 400."""
    for second in ("X-Tenant", "x-tenant", "X_Tenant", "x_tenant"):
        response = await _raw(
            gw,
            "GET",
            "/legacy/quotes",
            _bearer(gw.tokens["bob"]),
            ("X-Tenant", "acme-prod"),
            (second, "globex-prod"),
        )
        assert response.status == 400, (second, response.text)
    assert gw.upstream.seen == []


async def test_underscore_tenant_header_alone_is_refused(gw: Gateway) -> None:
    """X_Tenant alone: the decision sees no tenant, a CGI-style upstream sees one."""
    response = await _raw(
        gw, "GET", "/legacy/quotes", _bearer(gw.tokens["bob"]), ("X_Tenant", "globex-prod")
    )
    assert response.status in (400, 403)
    assert gw.upstream.seen == []


async def test_tenant_header_cannot_be_stripped_by_the_connection_list(gw: Gateway) -> None:
    """'Connection: X-Tenant' would make the tenant header hop-by-hop: the decision reads
    acme-prod, but the upstream would get no tenant at all and fall back to whatever it
    defaults to. The upstream must receive the tenant that was authorized."""
    response = await _raw(
        gw,
        "GET",
        "/legacy/quotes",
        _bearer(gw.tokens["bob"]),
        ("X-Tenant", "acme-prod"),
        ("Connection", "keep-alive, X-Tenant"),
    )
    assert response.status == 200
    headers = _upstream_headers(gw)
    assert headers.getall("X-Tenant") == ["acme-prod"]
    assert headers["X-Permgate-Tenant"] == "acme-prod"


async def test_tenant_header_with_a_list_value_is_no_tenant(gw: Gateway) -> None:
    """'X-Tenant: acme-prod, globex-prod' is one value to the decision (no such tenant),
    so it is refused rather than split differently upstream."""
    response = await _raw(
        gw,
        "GET",
        "/legacy/quotes",
        _bearer(gw.tokens["bob"]),
        ("X-Tenant", "acme-prod, globex-prod"),
    )
    assert (response.status, _json(response)["reason"]) == (403, "tenant_out_of_scope")
    assert gw.upstream.seen == []


async def test_header_tenant_case_variant_is_no_tenant(gw: Gateway) -> None:
    """'X-Tenant: ACME-PROD' names no tenant (ids are case-sensitive): refused, so a
    case-insensitive upstream cannot be reached with an unchecked spelling."""
    response = await _raw(
        gw, "GET", "/legacy/quotes", _bearer(gw.tokens["bob"]), ("X-Tenant", "ACME-PROD")
    )
    assert (response.status, _json(response)["reason"]) == (403, "tenant_out_of_scope")


# =========================================================================== identity headers


@pytest.mark.parametrize(
    "name",
    [
        "X-Permgate-Principal",
        "x-permgate-principal",
        "X_Permgate_Principal",
        "X-Permgate_Principal",
        "X-PERMGATE-TENANT",
        "X_Permgate_Tenant",
        "X-Permgate-Token-Id",
        "X-Permgate-Principal-Kind",
        "X-Permgate-Anything",
        "X-Forwarded-For",
        "X_Forwarded_For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "Forwarded",
        "X-Real-IP",
        "X_Request_Id",
    ],
)
async def test_client_cannot_spoof_identity_headers(gw: Gateway, name: str) -> None:
    """Every spelling of a header permgate owns is removed; the upstream sees only
    permgate's values."""
    response = await _raw(
        gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(gw.tokens["bob"]), (name, "root")
    )
    assert response.status == 200
    headers = _upstream_headers(gw)
    assert name not in headers or name.lower() in {
        "x-permgate-principal",
        "x-permgate-tenant",
        "x-permgate-token-id",
        "x-permgate-principal-kind",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    }
    assert "root" not in headers.values(), headers
    assert headers["X-Permgate-Principal"] == "bob"
    assert headers["X-Permgate-Tenant"] == "acme-prod"


@pytest.mark.parametrize(
    "listed",
    [
        "X-Permgate-Principal",
        "X-Permgate-Tenant, X-Permgate-Token-Id",
        "X-Forwarded-For",
        "X-Request-Id",
        "Host",
        "Content-Length",
    ],
)
async def test_connection_list_cannot_strip_what_permgate_sets(gw: Gateway, listed: str) -> None:
    """Headers permgate sets (and the framing and Host) survive a client Connection list."""
    response = await _raw(
        gw,
        "POST",
        "/policy/acme-prod/quotes",
        _bearer(gw.tokens["alice"]),
        ("Connection", f"keep-alive, {listed}"),
        ("Content-Length", "2"),
        body=b"{}",
    )
    assert response.status == 200
    headers = _upstream_headers(gw)
    assert headers["X-Permgate-Principal"] == "alice"
    assert headers["X-Permgate-Tenant"] == "acme-prod"
    assert "X-Permgate-Token-Id" in headers
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert "X-Request-Id" in headers
    assert gw.upstream.seen[-1]["body"] == "{}"


async def test_identity_headers_absent_on_public_routes(gw: Gateway) -> None:
    """A public route carries no principal: a client-sent one is removed, not relayed."""
    response = await _raw(
        gw, "GET", "/health", ("X-Permgate-Principal", "root"), ("X-Permgate-Tenant", "acme-prod")
    )
    assert response.status == 200
    headers = _upstream_headers(gw)
    assert "X-Permgate-Principal" not in headers
    assert "X-Permgate-Tenant" not in headers


# =========================================================================== shadow


async def test_shadow_never_forwards_another_accounts_caller(gw: Gateway) -> None:
    """acme-shadow forwards acme denials; globex's admin is denied there as usual."""
    response = await _raw(gw, "POST", "/policy/acme-shadow/quotes", _bearer(gw.tokens["gus"]))
    assert (response.status, _json(response)["reason"]) == (403, "tenant_out_of_scope")
    assert gw.upstream.seen == []


async def test_shadow_does_not_leak_to_enforced_tenants_via_the_cache(gw: Gateway) -> None:
    """A shadow_deny cached for acme-shadow must not be reused for acme-prod."""
    token = await _token_for(gw, "alice", ["quotes.read"], ["acme-prod", "acme-shadow"])
    response = await _raw(gw, "POST", "/policy/acme-shadow/quotes", _bearer(token))
    assert response.status == 200  # shadow: forwarded, recorded as shadow_deny
    response = await _raw(gw, "POST", "/policy/acme-prod/quotes", _bearer(token))
    assert (response.status, _json(response)["reason"]) == (403, "missing_permission")


async def test_shadow_to_enforce_takes_effect_on_the_next_request(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """A cached shadow_deny stops being forwarded once the tenant is enforced."""
    token = await _token_for(gw, "alice", ["quotes.read"], ["acme-shadow"])
    response = await _raw(gw, "POST", "/policy/acme-shadow/quotes", _bearer(token))
    assert response.status == 200
    status, _ = await _admin(
        http,
        gw,
        "PUT",
        "/v1/tenants/acme-shadow/enforcement",
        gw.tokens["root"],
        {"enforcement": "enforce"},
    )
    assert status == 200
    response = await _raw(gw, "POST", "/policy/acme-shadow/quotes", _bearer(token))
    assert (response.status, _json(response)["reason"]) == (403, "missing_permission")


async def test_enforce_cannot_be_switched_back_to_shadow(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Even an admin cannot turn an enforced tenant back into shadow to open it up."""
    status, body = await _admin(
        http,
        gw,
        "PUT",
        "/v1/tenants/acme-prod/enforcement",
        gw.tokens["root"],
        {"enforcement": "shadow"},
    )
    assert status == 409, body


# =========================================================================== leaks


async def test_audit_never_contains_a_presented_credential(gw: Gateway) -> None:
    """Valid, wrong, malformed and JWT credentials, in allowed and refused requests:
    none of their text appears in any audit event."""
    from harness import rsa_key

    other_key, _ = rsa_key()
    bob = gw.tokens["bob"]
    presented = [
        bob,
        bob[:-1] + ("A" if bob[-1] != "A" else "B"),
        "pgt_" + "0" * 16 + "_" + "x" * 43,
        gw.jwt("bob"),
        gw.jwt("nobody"),
        gw.jwt("bob", exp=int(time.time()) - 3600),
        jwt.encode(_claims(sub="bob"), other_key, algorithm="RS256"),
        "not.a.jwt-secretvalue",
        "eyJhbGciOiJSUzI1NiJ9.garbage-secretvalue.sig-secretvalue",
    ]
    for credential in presented:
        await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(credential))
    await asyncio.sleep(0.3)
    text = "\n".join(gw.audit_lines())
    assert text
    for credential in presented:
        secret_part = credential.split(".")[-1] if "." in credential else credential[-20:]
        assert credential not in text
        assert secret_part not in text, credential


async def test_upstream_down_answer_names_no_address(tmp_path: Path) -> None:
    """A 502 tells the client nothing about where the upstream is."""
    port = free_port()
    async with start_gateway(tmp_path, upstream_url=f"http://127.0.0.1:{port}") as gw:
        response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(gw.tokens["bob"]))
    assert response.status == 502
    body = _json(response)
    assert set(body) == {"error", "reason", "request_id"}
    assert str(port) not in response.text


@pytest.mark.parametrize(
    "target",
    ["/policy/no-such-tenant/quotes/Q-1", "/policy/globex-prod/quotes/Q-1"],
    ids=["unknown", "other-account"],
)
async def test_tenant_probe_without_credentials_learns_nothing(gw: Gateway, target: str) -> None:
    """Unauthenticated probes of tenant names all get the same 401."""
    response = await _raw(gw, "GET", target)
    assert (response.status, _json(response)["reason"]) == (401, "missing_credentials")


# =========================================================================== admin API


async def _frank(gw: Gateway) -> str:
    """frank: full-access (every permission, account-wide) on scope acme-test only, no
    admin powers; returns his *.* token on acme-test."""
    await gw.service.create_principal(
        CLI, "acme", "frank", tenants=["acme-test"], roles=[("full-access", None)]
    )
    return await _token_for(gw, "frank", ["*.*"], ["acme-test"])


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/v1/principals/frank/roles", [{"role": "admin"}]),
        ("PUT", "/v1/principals/bob/roles", [{"role": "full-access"}]),
        ("POST", "/v1/roles", {"name": "x", "display_name": "X", "permissions": ["*.*"]}),
        ("PATCH", "/v1/roles/reader", {"permissions": ["*.*"]}),
        ("DELETE", "/v1/roles/reader", None),
        ("POST", "/v1/principals", {"id": "sock", "roles": [{"role": "admin"}]}),
        ("PUT", "/v1/principals/frank/tenants", ["any"]),
        ("PATCH", "/v1/principals/root", {"disabled": True}),
        ("PUT", "/v1/principals/bob/tenants", ["any"]),  # beyond frank's own scope
        ("POST", "/v1/tokens", {"owner": "alice", "name": "x", "permissions": ["quotes.read"]}),
        ("POST", "/v1/principals", {"id": "sock", "tenants": ["any"]}),
        ("POST", "/v1/principals", {"id": "sock", "tenants": ["acme-prod"]}),
    ],
    ids=[
        "self-admin",
        "assign-role",
        "create-role",
        "widen-role",
        "delete-role",
        "create-with-roles",
        "own-scope",
        "disable-admin",
        "scope-beyond-own",
        "token-for-other",
        "create-scope-any",
        "create-scope-beyond",
    ],
)
async def test_non_admin_with_every_permission_cannot_escalate(
    gw: Gateway, http: aiohttp.ClientSession, method: str, path: str, body: object
) -> None:
    """frank holds *.* but no admin powers, on acme-test only: none of these admin
    calls may widen anyone's roles or tenant scope (admin powers are the admin role's alone)."""
    frank = await _frank(gw)
    jwt_frank = gw.jwt("frank")
    for credential in (frank, jwt_frank):
        status, answer = await _admin(http, gw, method, path, credential, body)
        assert status == 403, (status, answer)
        assert answer["error"] == "forbidden"
    principal = await gw.service.store.get_principal("bob")
    assert principal is not None and principal.tenants == ("any",)
    assert await gw.service.store.get_principal("sock") is None


async def test_non_admin_still_creates_principals_within_its_own_scope(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """The scope rule at creation refuses only what lies beyond the caller: frank may
    create a principal on his own tenant (and one with no scope at all)."""
    frank = await _frank(gw)
    status, answer = await _admin(
        http, gw, "POST", "/v1/principals", frank, {"id": "sock", "tenants": ["acme-test"]}
    )
    assert (status, answer["tenants"]) == (201, ["acme-test"])
    status, answer = await _admin(http, gw, "POST", "/v1/principals", frank, {"id": "sock2"})
    assert (status, answer["tenants"]) == (201, [])


async def test_non_admin_cannot_mint_a_token_wider_than_itself(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """frank (scope acme-test) asks for a token on any tenant / acme-prod: 422."""
    frank = await _frank(gw)
    for tenants in (["any"], ["acme-prod"], ["type:test", "acme-prod"]):
        status, answer = await _admin(
            http,
            gw,
            "POST",
            "/v1/tokens",
            frank,
            {"name": "wide", "permissions": ["*.*"], "tenants": tenants},
        )
        assert status == 422, (tenants, answer)


async def test_narrow_token_cannot_mint_a_wider_token(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """A root token holding only authTokens.write cannot buy root's *.* with it."""
    narrow = await _token_for(gw, "root", ["authTokens.write"], ["acme-prod"])
    for permissions, tenants in (
        (["*.*"], ["acme-prod"]),
        (["authTokens.write"], ["any"]),
        (["authTokens.*"], ["acme-prod"]),
    ):
        status, answer = await _admin(
            http,
            gw,
            "POST",
            "/v1/tokens",
            narrow,
            {"name": "wide", "permissions": permissions, "tenants": tenants},
        )
        assert status == 422, (permissions, tenants, answer)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/principals/alice", None),
        ("PATCH", "/v1/principals/alice", {"disabled": True}),
        ("PUT", "/v1/principals/alice/roles", [{"role": "admin"}]),
        ("PUT", "/v1/principals/alice/tenants", ["any"]),
        ("GET", "/v1/tenants/acme-prod", None),
        ("PUT", "/v1/tenants/acme-shadow/enforcement", {"enforcement": "enforce"}),
        ("GET", "/v1/roles/sales-agent", None),
        ("PATCH", "/v1/roles/sales-agent", {"permissions": ["*.*"]}),
        ("DELETE", "/v1/roles/sales-agent", None),
        ("GET", "/v1/tokens?owner=alice", None),
        ("POST", "/v1/tokens", {"owner": "alice", "name": "x", "permissions": ["quotes.read"]}),
        ("POST", "/v1/explain", {"principal": "alice", "method": "GET", "path": "/health"}),
    ],
    ids=[
        "get-principal",
        "patch-principal",
        "roles",
        "tenants",
        "get-tenant",
        "enforcement",
        "get-role",
        "patch-role",
        "delete-role",
        "list-tokens",
        "token-for",
        "explain",
    ],
)
async def test_another_accounts_admin_cannot_touch_acme(
    gw: Gateway, http: aiohttp.ClientSession, method: str, path: str, body: object
) -> None:
    """gus is globex's admin: every acme object is 'not found' to him, untouched."""
    status, answer = await _admin(http, gw, method, path, gw.tokens["gus"], body)
    assert status == 404, (status, answer)
    alice = await gw.service.store.get_principal("alice")
    assert alice is not None and not alice.disabled and alice.tenants != ("any",)
    shadow = await gw.service.store.get_tenant("acme-shadow")
    assert shadow is not None and shadow.enforcement == "shadow"


async def test_another_accounts_admin_cannot_revoke_or_list_acme_tokens(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """gus cannot revoke alice's token, and his token list shows none of acme's."""
    token_id = gw.tokens["alice"].removeprefix("pgt_").split("_")[0]
    status, _ = await _admin(http, gw, "DELETE", f"/v1/tokens/{token_id}", gw.tokens["gus"])
    assert status == 404
    status, listing = await _admin(http, gw, "GET", "/v1/tokens", gw.tokens["gus"])
    assert status == 200
    assert {item["owner"] for item in listing["items"]} <= {"gus"}
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(gw.tokens["alice"]))
    assert response.status == 200


async def test_another_accounts_admin_cannot_assign_an_acme_tenant_role(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """gus gives himself a role on an acme tenant, or scope over one: 422 either way."""
    status, _ = await _admin(
        http,
        gw,
        "PUT",
        "/v1/principals/gus/roles",
        gw.tokens["gus"],
        [{"role": "admin", "tenant": "acme-prod"}],
    )
    assert status == 422
    status, _ = await _admin(
        http, gw, "PUT", "/v1/principals/gus/tenants", gw.tokens["gus"], ["acme-prod"]
    )
    assert status == 422


async def test_explain_with_another_accounts_token_learns_nothing(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """root explains with gus's secret: not found, nothing about globex leaks."""
    status, answer = await _admin(
        http,
        gw,
        "POST",
        "/v1/explain",
        gw.tokens["root"],
        {"token": gw.tokens["gus"], "method": "GET", "path": "/policy/globex-prod/quotes/Q"},
    )
    assert status in (404, 422), answer
    assert "globex" not in json.dumps(answer)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/principals", {"id": "m1", "account": "globex"}),
        ("POST", "/v1/principals", {"id": "m2", "sessions_valid_after": None}),
        ("PATCH", "/v1/principals/bob", {"tenants": ["any"]}),
        ("PATCH", "/v1/principals/bob", {"roles": [{"role": "admin"}]}),
        ("PATCH", "/v1/principals/bob", {"account": "globex"}),
        ("PATCH", "/v1/principals/bob", {"id": "root"}),
        ("PATCH", "/v1/principals/bob", {"sessions_valid_after": None}),
        ("POST", "/v1/tokens", {"name": "m", "permissions": ["quotes.read"], "id": "0" * 16}),
        ("POST", "/v1/tokens", {"name": "m", "permissions": ["quotes.read"], "secret": "pgt_x"}),
        ("POST", "/v1/tokens", {"name": "m", "permissions": ["quotes.read"], "account": "g"}),
        ("POST", "/v1/tokens", {"name": "m", "permissions": ["quotes.read"], "expires_at": "x"}),
        ("POST", "/v1/tokens", {"name": "m", "permissions": ["quotes.read"], "expires_in": -1}),
        (
            "POST",
            "/v1/roles",
            {"name": "r", "display_name": "R", "permissions": [], "builtin": True},
        ),
        ("PATCH", "/v1/roles/admin", {"permissions": ["quotes.read"]}),
        ("PATCH", "/v1/roles/reader", {"name": "admin"}),
        ("POST", "/v1/tenants", {"id": "t1", "account": "globex"}),
        ("POST", "/v1/tenants", {"id": "any"}),
        ("POST", "/v1/tenants", {"id": "type:test"}),
        ("POST", "/v1/tenants", {"id": "acme-prod"}),
    ],
)
async def test_read_only_and_foreign_fields_cannot_be_mass_assigned(
    gw: Gateway, http: aiohttp.ClientSession, method: str, path: str, body: object
) -> None:
    """Even root cannot set fields permgate owns (account, ids, secrets, sessions,
    builtin) nor rewrite the admin role: 4xx and nothing changes."""
    status, answer = await _admin(http, gw, method, path, gw.tokens["root"], body)
    assert status in (403, 409, 422), (status, answer)
    bob = await gw.service.store.get_principal("bob")
    assert bob is not None and bob.account == "acme" and bob.tenants == ("any",)
    roles = await gw.service.store.get_roles("acme")
    assert roles["admin"].permissions == ("*.*",)
    assert await gw.service.store.get_tenant("t1") is None


async def test_tenant_id_differing_only_in_case_cannot_be_created(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """globex's admin registers 'ACME-PROD' in globex: an upstream that compares tenant
    locators case-insensitively would then serve acme's data to globex. Refused."""
    status, answer = await _admin(
        http, gw, "POST", "/v1/tenants", gw.tokens["gus"], {"id": "ACME-PROD"}
    )
    assert status == 409, answer
    response = await _raw(gw, "GET", "/policy/ACME-PROD/quotes/Q-1", _bearer(gw.tokens["gus"]))
    assert response.status == 403
    assert gw.upstream.seen == []


async def test_admin_api_refuses_two_authorization_headers(gw: Gateway) -> None:
    """On the admin listener too, a second Authorization header is a 400."""
    host, port = _admin_address(gw)
    response = await exchange(
        host,
        port,
        request(
            "GET",
            "/v1/principals",
            [
                ("Host", "admin"),
                ("Authorization", f"Bearer {gw.tokens['alice']}"),
                ("Authorization", f"Bearer {gw.tokens['root']}"),
            ],
        ),
    )
    assert response.status == 400


async def test_token_listing_never_shows_secrets_or_hashes(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """root lists every token of acme: no secret, no hash, no prefix of one."""
    status, listing = await _admin(http, gw, "GET", "/v1/tokens", gw.tokens["root"])
    assert status == 200
    text = json.dumps(listing)
    for name, secret in gw.tokens.items():
        assert secret not in text, name
        # The random part follows "pgt_<id>_" and may itself hold "_": take all of it.
        random_part = secret.split("_", 2)[2]
        assert random_part[:12] not in text, name
    assert "hash" not in text


async def test_jwt_naming_its_own_key_is_refused(gw: Gateway) -> None:
    """A JWT signed by the attacker's key that embeds that key ('jwk') or points at it
    ('jku', 'x5u'): the gateway trusts only its configured keys."""
    from jwt.algorithms import RSAAlgorithm

    from harness import rsa_key

    key, _ = rsa_key()
    public_jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    for headers in (
        {"jwk": public_jwk},
        {"jku": "http://127.0.0.1:1/jwks.json", "kid": "evil"},
        {"x5u": "http://127.0.0.1:1/cert.pem"},
    ):
        token = jwt.encode(_claims(), key, algorithm="RS256", headers=headers)
        response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
        assert (response.status, _json(response)["reason"]) == (401, "invalid_token")
    assert gw.upstream.seen == []


async def test_jwt_session_revoked_by_role_removal_is_not_served_from_caches(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """alice's JWT is allowed (verified JWT and decision both cached); an admin removes
    her role: the same JWT is 401 session_revoked on the next request."""
    token = gw.jwt("alice", iat=int(time.time()) - 5)
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
    assert response.status == 200
    status, _ = await _admin(http, gw, "PUT", "/v1/principals/alice/roles", gw.tokens["root"], [])
    assert status == 200
    response = await _raw(gw, "GET", "/policy/acme-prod/quotes/Q-1", _bearer(token))
    assert (response.status, _json(response)["reason"]) == (401, "session_revoked")


async def test_claim_tenant_endpoint_cannot_be_fed_by_a_header_or_token(tmp_path: Path) -> None:
    """An entry whose tenant is a JWT claim: an auth token (no claims) or a header
    naming a tenant gives no tenant, so the request is refused; the JWT's own claim
    decides."""
    map_text = (
        "version: 1\nendpoints:\n"
        "  - {id: legacy.claims, method: GET, path: /claims, permissions: [quotes.read],\n"
        "     tenant: {claim: tenant}}\n"
    )
    async with start_gateway(tmp_path) as gw:
        path = Path(gw.runtime.settings.endpoint_map)
        path.write_text(map_text, encoding="utf-8")
        await eventually(
            lambda: gw.runtime.gateway.endpoint_map.get("legacy.claims") is not None, "reload"
        )
        bob = gw.tokens["bob"]
        response = await _raw(gw, "GET", "/claims", _bearer(bob), ("X-Tenant", "acme-prod"))
        assert (response.status, _json(response)["reason"]) == (403, "tenant_out_of_scope")
        alice = gw.jwt("alice", tenant="globex-prod")
        response = await _raw(gw, "GET", "/claims", _bearer(alice), ("tenant", "acme-prod"))
        assert (response.status, _json(response)["reason"]) == (403, "tenant_out_of_scope")
        assert gw.upstream.seen == []
        response = await _raw(gw, "GET", "/claims", _bearer(gw.jwt("alice", tenant="acme-prod")))
        assert response.status == 200
        assert _upstream_headers(gw)["X-Permgate-Tenant"] == "acme-prod"
