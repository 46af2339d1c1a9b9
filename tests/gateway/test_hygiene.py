"""Request hygiene: what is refused, by which layer, and what passes.

The wire table sends raw bytes to a real aiohttp server whose middleware runs the
checks the way the gateway does, and records which layer answered: ``aiohttp`` (its
own parser said 400 before any handler ran), ``hygiene`` (our check said 400, JSON
reason) or nobody (200, echoing the raw target it saw).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from permgate.gateway.hygiene import (
    ABSOLUTE_FORM,
    AMBIGUOUS_HEADER,
    AMBIGUOUS_PATH,
    CONFLICTING_LENGTH,
    DUPLICATE_HEADER,
    FRAMING_REASONS,
    INVALID_HOST,
    INVALID_TARGET,
    REASONS,
    UNSUPPORTED_TRANSFER_CODING,
    UNSUPPORTED_VERSION,
    ForwardHeaders,
    check_headers,
    check_host,
    check_message,
    check_target,
    forward_headers,
    new_id,
    request_id,
    split_target,
)
from rawhttp import RawResponse, exchange, request

TENANT_HEADER = "X-Tenant"
AIOHTTP = "aiohttp"  # the server's own parser refused it
HYGIENE = "hygiene"  # check_target / check_headers refused it

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def hygiene_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Runs before routing's outcome matters, as the gateway pipeline does."""
    reason = check_target(request.method, request.raw_path) or check_headers(
        request.headers, TENANT_HEADER
    )
    if reason is not None:
        return web.json_response({"error": "bad_request", "reason": reason}, status=400)
    return web.Response(text=request.raw_path)


async def never_called(request: web.Request) -> web.Response:
    raise AssertionError("the middleware answers every request")


@pytest.fixture
async def server(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    app = web.Application(middlewares=[hygiene_middleware])
    app.router.add_route("*", "/{tail:.*}", never_called)
    return await aiohttp_server(app)


def get(target: str, *extra: tuple[str, str]) -> bytes:
    return request("GET", target, [("Host", "gw"), *extra])


def post(headers: list[tuple[str, str]], body: bytes) -> bytes:
    return request("POST", "/a", [("Host", "gw"), *headers], body)


def layer(response: RawResponse) -> tuple[str | None, str | None]:
    """Which layer refused, and with which reason (aiohttp's own 400 is plain text)."""
    if response.status != 400:
        return None, None
    if response.headers.get("Content-Type", "").startswith("application/json"):
        return HYGIENE, json.loads(response.body)["reason"]
    return AIOHTTP, None


# id, raw request bytes, refusing layer, reason (None when aiohttp refused)
REFUSED: list[tuple[str, bytes, str, str | None]] = [
    ("dot-segment", get("/a/./b"), HYGIENE, AMBIGUOUS_PATH),
    ("dotdot-segment", get("/a/../b"), HYGIENE, AMBIGUOUS_PATH),
    ("trailing-dotdot", get("/a/.."), HYGIENE, AMBIGUOUS_PATH),
    ("dotdot-before-query", get("/a/..?x=1"), HYGIENE, AMBIGUOUS_PATH),
    ("encoded-dot", get("/a/%2e/b"), HYGIENE, AMBIGUOUS_PATH),
    ("encoded-dotdot-upper", get("/a/%2E%2E/b"), HYGIENE, AMBIGUOUS_PATH),
    ("half-encoded-dotdot", get("/a/.%2e/b"), HYGIENE, AMBIGUOUS_PATH),
    ("dotdot-with-param", get("/a/..;x=1/b"), HYGIENE, AMBIGUOUS_PATH),
    ("encoded-slash", get("/a%2fb"), HYGIENE, AMBIGUOUS_PATH),
    ("encoded-slash-upper", get("/a%2Fb"), HYGIENE, AMBIGUOUS_PATH),
    ("encoded-backslash", get("/a%5cb"), HYGIENE, AMBIGUOUS_PATH),
    ("encoded-backslash-upper", get("/a%5Cb"), HYGIENE, AMBIGUOUS_PATH),
    ("raw-backslash", get("/a\\..\\b"), HYGIENE, AMBIGUOUS_PATH),
    ("matrix-param", get("/a;jsessionid=1/b"), HYGIENE, AMBIGUOUS_PATH),
    ("encoded-semicolon", get("/a%3bx/b"), HYGIENE, AMBIGUOUS_PATH),
    ("raw-hash", get("/a#/../admin"), HYGIENE, AMBIGUOUS_PATH),
    ("raw-hash-in-query", get("/a?x=1#frag"), HYGIENE, INVALID_TARGET),
    ("empty-segment", get("/a//b"), HYGIENE, AMBIGUOUS_PATH),
    ("leading-double-slash", get("//evil/a"), HYGIENE, AMBIGUOUS_PATH),
    ("encoded-nul", get("/a%00.json"), HYGIENE, AMBIGUOUS_PATH),
    ("encoded-control", get("/a%0d%0aX-Injected:1"), HYGIENE, AMBIGUOUS_PATH),
    ("encoded-del", get("/a%7f"), HYGIENE, AMBIGUOUS_PATH),
    ("invalid-escape", get("/a%zz"), HYGIENE, AMBIGUOUS_PATH),
    ("truncated-escape", get("/a%4"), HYGIENE, AMBIGUOUS_PATH),
    ("lone-percent", get("/a%"), HYGIENE, AMBIGUOUS_PATH),
    ("overlong-utf8-dot", get("/a/%c0%ae%c0%ae/b"), HYGIENE, AMBIGUOUS_PATH),
    ("overlong-utf8-slash", get("/a%c0%afb"), HYGIENE, AMBIGUOUS_PATH),
    ("utf8-surrogate", get("/a%ed%a0%80"), HYGIENE, AMBIGUOUS_PATH),
    ("truncated-utf8", get("/caf%c3"), HYGIENE, AMBIGUOUS_PATH),
    ("fullwidth-dots", get("/a/%ef%bc%8e%ef%bc%8e/b"), HYGIENE, AMBIGUOUS_PATH),
    ("encoded-unreserved", get("/auth/users/%77hoami"), HYGIENE, AMBIGUOUS_PATH),
    ("double-encoded-dot", get("/a/%252e%252e/b"), HYGIENE, AMBIGUOUS_PATH),
    ("absolute-form-foreign", get("http://evil.example/a"), HYGIENE, ABSOLUTE_FORM),
    ("absolute-form-own-host", get("http://gw/a"), HYGIENE, ABSOLUTE_FORM),
    ("asterisk-form", request("OPTIONS", "*", [("Host", "gw")]), HYGIENE, INVALID_TARGET),
    (
        "connect-authority",
        request("CONNECT", "evil:443", [("Host", "gw")]),
        HYGIENE,
        INVALID_TARGET,
    ),
    (
        "duplicate-authorization",
        get("/a", ("Authorization", "Bearer a"), ("Authorization", "Bearer b")),
        HYGIENE,
        DUPLICATE_HEADER,
    ),
    (
        "duplicate-tenant",
        get("/a", ("X-Tenant", "acme"), ("x-tenant", "evil")),
        HYGIENE,
        DUPLICATE_HEADER,
    ),
    (
        "underscore-tenant",
        get("/a", ("X-Tenant", "acme"), ("X_Tenant", "evil")),
        HYGIENE,
        AMBIGUOUS_HEADER,
    ),
    (
        "gzip-transfer-coding",
        post([("Transfer-Encoding", "gzip, chunked")], b"1\r\nz\r\n0\r\n\r\n"),
        HYGIENE,
        UNSUPPORTED_TRANSFER_CODING,
    ),
    # Refused by aiohttp's own parser (llhttp, strict) before any handler runs.
    ("raw-nul", get("/a\x00b"), AIOHTTP, None),
    ("raw-control", get("/a\x01b"), AIOHTTP, None),
    ("raw-tab", get("/a\tb"), AIOHTTP, None),
    ("raw-del", get("/a\x7fb"), AIOHTTP, None),
    ("raw-control-in-query", get("/a?x=\x01"), AIOHTTP, None),
    ("raw-non-ascii", get("/caf\udcc3\udca9"), AIOHTTP, None),
    ("raw-invalid-utf8", get("/a\udcff"), AIOHTTP, None),
    ("raw-non-ascii-query", get("/a?q=\udcc3\udca9"), AIOHTTP, None),
    ("relative-target", get("a/b"), AIOHTTP, None),
    ("scheme-without-authority", get("http:/a"), AIOHTTP, None),
    (
        "duplicate-content-length-same",
        post([("Content-Length", "1"), ("Content-Length", "1")], b"z"),
        AIOHTTP,
        None,
    ),
    (
        "duplicate-content-length-differ",
        post([("Content-Length", "1"), ("Content-Length", "2")], b"zz"),
        AIOHTTP,
        None,
    ),
    ("content-length-list", post([("Content-Length", "1, 1")], b"z"), AIOHTTP, None),
    ("content-length-signed", post([("Content-Length", "+1")], b"z"), AIOHTTP, None),
    (
        "content-length-and-chunked",
        post([("Content-Length", "1"), ("Transfer-Encoding", "chunked")], b"1\r\nz\r\n0\r\n\r\n"),
        AIOHTTP,
        None,
    ),
    (
        "chunked-and-content-length",
        post([("Transfer-Encoding", "chunked"), ("Content-Length", "1")], b"1\r\nz\r\n0\r\n\r\n"),
        AIOHTTP,
        None,
    ),
    (
        "duplicate-chunked",
        post(
            [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
            b"1\r\nz\r\n0\r\n\r\n",
        ),
        AIOHTTP,
        None,
    ),
    ("duplicate-host", get("/a", ("Host", "other")), AIOHTTP, None),
    ("space-before-colon", get("/a", ("Authorization ", "Bearer x")), AIOHTTP, None),
]


@pytest.mark.parametrize(
    ("raw", "expected_layer", "expected_reason"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
async def test_ambiguous_request_is_refused_with_400(
    server: TestServer, raw: bytes, expected_layer: str, expected_reason: str | None
) -> None:
    """Each class of ambiguous request gets a 400, from the layer recorded in the table."""
    response = await exchange(server.host, server.port, raw)
    assert response.status == 400, response.text
    assert layer(response) == (expected_layer, expected_reason)


CLEAN: list[tuple[str, str]] = [
    ("root", "/"),
    ("plain", "/policy/acme-prod/quotes/Q-1"),
    ("trailing-slash", "/a/b/"),
    ("dot-inside-segment", "/a.b/c"),
    ("three-dots", "/a/.../b"),
    ("dot-prefixed-name", "/.well-known/openid-configuration"),
    ("encoded-space", "/a/%20b"),
    ("encoded-reserved", "/a/%3F%23%26%2B"),
    ("encoded-percent", "/a/100%25"),
    ("encoded-utf8", "/caf%C3%A9"),
    ("query-with-dotdot", "/a?path=../../etc"),
    ("query-with-encoded-slash", "/a?x=%2f&y=%5C%00"),
    ("query-with-semicolon", "/a?x=1;y=2"),
    ("empty-query", "/a?"),
    ("sub-delims", "/a/b!$&'()*+,=:@c"),
]


@pytest.mark.parametrize("target", [c[1] for c in CLEAN], ids=[c[0] for c in CLEAN])
async def test_clean_look_alike_passes_untouched(server: TestServer, target: str) -> None:
    """A target that only looks suspicious reaches the handler with its raw bytes intact."""
    response = await exchange(server.host, server.port, get(target))
    assert (response.status, response.text) == (200, target)


async def test_lone_underscore_tenant_header_is_refused(server: TestServer) -> None:
    """``X_Tenant`` alone is refused: the upstream might read it as ``X-Tenant``."""
    response = await exchange(server.host, server.port, get("/a", ("X_Tenant", "evil")))
    assert layer(response) == (HYGIENE, AMBIGUOUS_HEADER)


async def test_chunked_body_without_length_passes(server: TestServer) -> None:
    """Plain ``Transfer-Encoding: chunked`` is the ordinary streamed upload."""
    raw = post([("Transfer-Encoding", "chunked")], b"1\r\nz\r\n0\r\n\r\n")
    assert (await exchange(server.host, server.port, raw)).status == 200


# --------------------------------------------------------------------------- units


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("GET", "/a\x00b", AMBIGUOUS_PATH),
        ("GET", "/a\x1fb", AMBIGUOUS_PATH),
        ("GET", "/caf\xe9", AMBIGUOUS_PATH),
        ("GET", "/a\udcff", AMBIGUOUS_PATH),
        ("GET", "/a?x=\x00", INVALID_TARGET),
        ("GET", "/a?x=\xe9", INVALID_TARGET),
        ("GET", "/a?x=1 2", INVALID_TARGET),
        ("GET", "a/b", INVALID_TARGET),
        ("GET", "", INVALID_TARGET),
        ("GET", "https://gw:443/a", ABSOLUTE_FORM),
        ("CONNECT", "gw:443", INVALID_TARGET),
        ("GET", "/a/%E2%80%A4%E2%80%A4", AMBIGUOUS_PATH),
        ("GET", "/a/e%CC%81", AMBIGUOUS_PATH),
    ],
    ids=[
        "raw-nul",
        "raw-control",
        "raw-latin1",
        "surrogate-escaped-byte",
        "nul-in-query",
        "non-ascii-query",
        "space-in-query",
        "relative",
        "empty",
        "absolute-https",
        "connect",
        "one-dot-leaders",
        "not-nfkc-stable",
    ],
)
def test_check_target_refuses_without_relying_on_the_parser(
    method: str, target: str, expected: str
) -> None:
    """check_target refuses, by itself, what aiohttp's strict parser refuses today."""
    assert check_target(method, target) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a/b?x=1", ("/a/b", "?x=1")),
        ("/a", ("/a", "")),
        ("/a?", ("/a", "?")),
        ("/a?b?c", ("/a", "?b?c")),
    ],
    ids=["query", "no-query", "empty-query", "second-question-mark"],
)
def test_split_target_separates_path_and_query(target: str, expected: tuple[str, str]) -> None:
    """The path is what templates see; the query keeps its ``?`` so it can be re-joined."""
    assert split_target(target) == expected
    assert "".join(split_target(target)) == target


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ((("Content-Length", "3"), ("Content-Length", "3")), CONFLICTING_LENGTH),
        ((("Content-Length", "3"), ("Content-Length", "4")), CONFLICTING_LENGTH),
        ((("Content-Length", "3"), ("Transfer-Encoding", "chunked")), CONFLICTING_LENGTH),
        ((("Content-Length", "-3"),), CONFLICTING_LENGTH),
        (
            (("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")),
            UNSUPPORTED_TRANSFER_CODING,
        ),
        ((("Authorization", "a"), ("AUTHORIZATION", "b")), DUPLICATE_HEADER),
        ((("X-Tenant", "a"), ("x-tenant", "a")), DUPLICATE_HEADER),
        ((("x_tenant", "a"),), AMBIGUOUS_HEADER),
        ((("Content-Length", "3"), ("Authorization", "a"), ("X-Tenant", "t")), None),
        ((("X_Custom", "a"), ("Transfer-Encoding", "Chunked")), None),
    ],
    ids=[
        "same-lengths",
        "different-lengths",
        "length-and-chunked",
        "negative-length",
        "chunked-twice",
        "authorization-twice-any-case",
        "tenant-twice-same-value",
        "underscore-tenant",
        "ordinary",
        "unrelated-underscore",
    ],
)
def test_check_headers(pairs: tuple[tuple[str, str], ...], expected: str | None) -> None:
    """Security-relevant headers must have exactly one reading."""
    assert check_headers(headers(*pairs), TENANT_HEADER) == expected


@pytest.mark.parametrize(
    ("tenant_headers", "pairs", "expected"),
    [
        (None, (("X-Tenant", "a"), ("X-Tenant", "b")), None),
        (
            frozenset({"X-Tenant", "X-Account-Tenant"}),
            (("x-account-tenant", "a"), ("X-Account-Tenant", "b")),
            DUPLICATE_HEADER,
        ),
        (
            frozenset({"X-Tenant", "X-Account-Tenant"}),
            (("X_Account_Tenant", "a"),),
            AMBIGUOUS_HEADER,
        ),
        (frozenset(), (("X-Tenant", "a"),), None),
    ],
    ids=[
        "no-tenant-header",
        "any-of-the-map's-headers-twice",
        "underscore-variant-of-one",
        "empty-set",
    ],
)
def test_check_headers_takes_every_tenant_header_of_the_map(
    tenant_headers: frozenset[str] | None, pairs: tuple[tuple[str, str], ...], expected: str | None
) -> None:
    """Before routing the tenant header is unknown, so every one the map uses is guarded."""
    assert check_headers(headers(*pairs), tenant_headers) == expected


def test_reasons_are_a_closed_set() -> None:
    """Every reason id a check can return is listed in REASONS (a metric/audit label)."""
    returned = {case[3] for case in REFUSED if case[3] is not None}
    assert returned <= REASONS


IDENTITY = {
    "X-Permgate-Principal": "alice",
    "X-Permgate-Principal-Kind": "user",
    "X-Permgate-Tenant": "acme-prod",
    "X-Request-Id": "req-1",
}


def forward(*pairs: tuple[str, str], drop_credential: bool = True) -> CIMultiDict[str]:
    return block(
        forward_headers(
            headers(("Host", "gw.example"), *pairs),
            client_ip="10.0.0.7",
            scheme="https",
            host="gw.example",
            drop_credential=drop_credential,
            identity=IDENTITY,
        )
    )


def block(sent: ForwardHeaders) -> CIMultiDict[str]:
    """The forwarded lines as a mapping, to look names up in."""
    return CIMultiDict(sent.lines)


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Authenticate",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Forwarded-Uri",
        "X-Original-Method",
        "X-Forwarded-Path",
        "X-Forwarded-Prefix",
        "Forwarded",
        "X-Real-IP",
        "Expect",
        "X-Permgate-Principal",
        "x-permgate-tenant",
        "X_Permgate_Principal",
        "x_permgate_admin",
        "X-PERMGATE-ANYTHING",
        "X_HTTP_Method_Override",
        "X_Forwarded_For",
        "X_Request_Id",
    ],
)
def test_forward_headers_removes(name: str) -> None:
    """Hop-by-hop, override, address-claim and permgate-namespace headers never pass."""
    out = forward((name, "client-value"))
    assert "client-value" not in out.values()


def test_forward_headers_keeps_end_to_end_headers() -> None:
    """Ordinary headers pass with their case, order and repetitions intact."""
    out = forward(("Accept", "a/b"), ("X-Custom", "1"), ("x-custom", "2"), ("X_Other", "3"))
    assert [(k, v) for k, v in out.items()][:5] == [
        ("Host", "gw.example"),
        ("Accept", "a/b"),
        ("X-Custom", "1"),
        ("x-custom", "2"),
        ("X_Other", "3"),
    ]


def test_forward_headers_applies_connection_list_before_adding_own() -> None:
    """A client listing permgate's headers in Connection cannot strip them."""
    out = forward(
        ("Connection", "keep-alive, X-Permgate-Principal, X-Forwarded-For, X-Request-Id, X-Foo"),
        ("X-Foo", "hop"),
    )
    assert "X-Foo" not in out
    assert out["X-Permgate-Principal"] == "alice"
    assert out["X-Forwarded-For"] == "10.0.0.7"
    assert out["X-Request-Id"] == "req-1"


def test_forward_headers_connection_list_cannot_strip_host_or_length() -> None:
    """Framing and Host are end-to-end whatever the client's Connection says."""
    out = forward(("Connection", "Host, Content-Length"), ("Content-Length", "3"))
    assert (out["Host"], out["Content-Length"]) == ("gw.example", "3")


def test_forward_headers_sets_forwarded_fresh() -> None:
    """Client X-Forwarded-* claims are replaced, not appended to: permgate is the edge."""
    out = forward(("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "http"))
    assert out.getall("X-Forwarded-For") == ["10.0.0.7"]
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Forwarded-Host") == ["gw.example"]


def test_forward_headers_identity_replaces_client_spoof() -> None:
    """The identity headers are exactly the caller's, one value each."""
    out = forward(("X-Permgate-Principal", "root"), ("x-request-id", "spoof"))
    assert out.getall("X-Permgate-Principal") == ["alice"]
    assert out.getall("X-Request-Id") == ["req-1"]


@pytest.mark.parametrize(
    ("drop_credential", "expected"),
    [(True, []), (False, ["Bearer pgt_x"])],
    ids=["dropped", "kept"],
)
def test_forward_headers_credential(drop_credential: bool, expected: list[str]) -> None:
    """Authorization reaches the upstream only when configured to."""
    out = forward(("Authorization", "Bearer pgt_x"), drop_credential=drop_credential)
    assert out.getall("Authorization", []) == expected


@pytest.mark.parametrize(
    ("pairs", "kept"),
    [
        ((("X-Request-Id", "abc-123.x:y_Z"),), True),
        ((("X-Request-Id", "a" * 128),), True),
        ((("X-Request-Id", "a" * 129),), False),
        ((("X-Request-Id", ""),), False),
        ((("X-Request-Id", "a b"),), False),
        ((("X-Request-Id", "a\u00e9"),), False),
        ((("X-Request-Id", "a"), ("X-Request-Id", "b")), False),
        ((), False),
    ],
    ids=["well-formed", "128-chars", "129-chars", "empty", "space", "non-ascii", "twice", "none"],
)
def test_request_id(pairs: tuple[tuple[str, str], ...], kept: bool) -> None:
    """A well-formed client id is kept; anything else gets a fresh, well-formed one."""
    rid = request_id(headers(*pairs))
    if kept:
        assert rid == pairs[0][1]
    else:
        assert rid not in [v for _, v in pairs]
        assert check_target("GET", "/" + rid) is None and 1 <= len(rid) <= 128


def test_request_ids_are_unique() -> None:
    """Generated ids do not repeat."""
    assert len({request_id(headers()) for _ in range(1000)}) == 1000


def test_new_ids_are_128_bit_hex_and_unique_across_refills() -> None:
    """Ids made ahead in batches are 32 hex digits and never repeat, over several batches."""
    ids = [new_id() for _ in range(2000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_worker_makes_its_own_ids() -> None:
    """A worker forked after ids were made ahead never hands out the parent's next ids."""
    new_id()  # the parent now holds ids made ahead
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids and leave at once
        os.write(write_end, " ".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 4096).decode().split()
    os.close(read_end)
    os.waitpid(pid, 0)
    parent = [new_id() for _ in range(10)]
    assert len(child) == 10 and not set(child) & set(parent)


# id, Host field lines, protocol version, expected reason
HOSTS: list[tuple[str, list[str], tuple[int, int], str | None]] = [
    ("name", ["gw"], (1, 1), None),
    ("name-and-port", ["api.example.com:8080"], (1, 1), None),
    ("ipv4-and-port", ["127.0.0.1:65535"], (1, 1), None),
    ("ipv6-literal", ["[::1]"], (1, 1), None),
    ("ipv6-literal-and-port", ["[2001:db8::7]:443"], (1, 1), None),
    ("underscore-and-tilde", ["svc_a~b"], (1, 1), None),
    ("http10-without-host", [], (1, 0), None),
    ("http11-without-host", [], (1, 1), INVALID_HOST),
    ("two-hosts", ["gw", "gw"], (1, 1), INVALID_HOST),
    ("empty", [""], (1, 1), INVALID_HOST),
    ("empty-http10", [""], (1, 0), INVALID_HOST),
    ("path", ["x/policy/globex-prod/quotes"], (1, 1), INVALID_HOST),
    ("query", ["x?a=1"], (1, 1), INVALID_HOST),
    ("fragment", ["x#frag"], (1, 1), INVALID_HOST),
    ("userinfo", ["user@gw"], (1, 1), INVALID_HOST),
    ("space", ["g w"], (1, 1), INVALID_HOST),
    ("tab", ["gw\t"], (1, 1), INVALID_HOST),
    ("control-byte", ["gw\x01"], (1, 1), INVALID_HOST),
    ("nul", ["gw\x00"], (1, 1), INVALID_HOST),
    ("percent-encoded", ["g%77"], (1, 1), INVALID_HOST),
    ("lone-percent", ["gw%"], (1, 1), INVALID_HOST),
    ("backslash", ["gw\\evil"], (1, 1), INVALID_HOST),
    ("sub-delims", ["gw;x=1"], (1, 1), INVALID_HOST),
    ("non-ascii", ["g\u00e9"], (1, 1), INVALID_HOST),
    ("empty-port", ["gw:"], (1, 1), INVALID_HOST),
    ("port-not-digits", ["gw:http"], (1, 1), INVALID_HOST),
    ("port-too-large", ["gw:65536"], (1, 1), INVALID_HOST),
    ("port-too-long", ["gw:000080"], (1, 1), INVALID_HOST),
    ("two-ports", ["gw:80:81"], (1, 1), INVALID_HOST),
    ("bare-ipv6", ["::1"], (1, 1), INVALID_HOST),
    ("ipv6-zone", ["[fe80::1%25eth0]"], (1, 1), INVALID_HOST),
    ("ipv6-not-an-address", ["[1:2:3]"], (1, 1), INVALID_HOST),
    ("ipvfuture", ["[v1.fe]"], (1, 1), INVALID_HOST),
    ("unclosed-bracket", ["[::1"], (1, 1), INVALID_HOST),
]


@pytest.mark.parametrize(
    ("values", "version", "expected"),
    [case[1:] for case in HOSTS],
    ids=[case[0] for case in HOSTS],
)
def test_check_host(values: list[str], version: tuple[int, int], expected: str | None) -> None:
    """Host is one RFC 9110 host[:port] whose name has nothing a URL could re-read."""
    assert check_host(values, version) == expected


# id, version, header pairs, expected reason
MESSAGES: list[tuple[str, tuple[int, int], tuple[tuple[str, str], ...], str | None]] = [
    ("http11", (1, 1), (("Host", "gw"),), None),
    ("http10", (1, 0), (), None),
    ("http09", (0, 9), (), UNSUPPORTED_VERSION),
    ("http12", (1, 2), (("Host", "gw"),), UNSUPPORTED_VERSION),
    ("http20", (2, 0), (("Host", "gw"),), UNSUPPORTED_VERSION),
    ("http10-chunked", (1, 0), (("Transfer-Encoding", "chunked"),), UNSUPPORTED_TRANSFER_CODING),
    ("http10-gzip", (1, 0), (("Transfer-Encoding", "gzip"),), UNSUPPORTED_TRANSFER_CODING),
    ("http11-chunked", (1, 1), (("Host", "gw"), ("Transfer-Encoding", "chunked")), None),
    ("http11-bad-host", (1, 1), (("Host", "gw/x"),), INVALID_HOST),
]


@pytest.mark.parametrize(
    ("version", "pairs", "expected"),
    [case[1:] for case in MESSAGES],
    ids=[case[0] for case in MESSAGES],
)
def test_check_message(
    version: tuple[int, int], pairs: tuple[tuple[str, str], ...], expected: str | None
) -> None:
    """Only HTTP/1.0 and 1.1; no Transfer-Encoding on HTTP/1.0; a valid Host."""
    assert check_message(version, headers(*pairs)) == expected


def test_framing_reasons_are_reasons() -> None:
    """The reasons that end a connection are a subset of the closed reason set."""
    assert FRAMING_REASONS <= REASONS


@pytest.mark.parametrize("spelling", ["X-Tenant", "x-tenant", "X-TENANT"])
def test_forward_headers_strips_declared_tenant_headers(spelling: str) -> None:
    """A stripped tenant header goes in any case; identity may set it again."""
    out = block(
        forward_headers(
            headers(("Host", "gw"), (spelling, "globex-prod"), ("X-Other", "kept")),
            client_ip="10.0.0.7",
            scheme="http",
            host="gw",
            drop_credential=True,
            identity={"X-Request-Id": "r"},
            strip=frozenset({"x-tenant"}),
        )
    )
    assert "X-Tenant" not in out
    assert out["X-Other"] == "kept"


def test_forward_headers_without_host_sets_no_forwarded_host() -> None:
    """No (validated) Host, no X-Forwarded-Host: nothing is invented."""
    out = block(
        forward_headers(
            headers(),
            client_ip="10.0.0.7",
            scheme="http",
            host=None,
            drop_credential=True,
            identity={"X-Request-Id": "r"},
        )
    )
    assert "X-Forwarded-Host" not in out


@pytest.mark.parametrize(
    ("client_headers", "host", "noted"),
    [
        ((("host", "gw"), ("content-length", "3")), "gw", (True, "3")),
        ((), None, (False, None)),
    ],
    ids=["host-and-length", "neither"],
)
def test_forward_headers_note_host_and_length(
    client_headers: tuple[tuple[str, str], ...], host: str | None, noted: tuple[bool, str | None]
) -> None:
    """The block says whether it carries Host and its Content-Length, for the framing;
    what the client did not send is not claimed."""
    sent = forward_headers(
        headers(*client_headers),
        client_ip="10.0.0.7",
        scheme="http",
        host=host,
        drop_credential=True,
        identity={"X-Request-Id": "r"},
    )
    assert (sent.has_host, sent.content_length) == noted


def test_forward_headers_replace_keeps_one_value() -> None:
    """A replaced name (a trace context's traceparent) is sent once, the new value."""
    sent = forward_headers(
        headers(("Host", "gw"), ("TraceParent", "client"), ("X-Other", "kept")),
        client_ip="10.0.0.7",
        scheme="http",
        host="gw",
        drop_credential=True,
        identity={"X-Request-Id": "r"},
    )
    sent.replace("traceparent", "ours")
    assert block(sent).getall("traceparent") == ["ours"]


def test_forward_headers_note_a_host_set_by_identity() -> None:
    """A tenant read from Host is set again by identity: the block carries that Host."""
    sent = forward_headers(
        headers(("Host", "acme.example")),
        client_ip="10.0.0.7",
        scheme="http",
        host="acme.example",
        drop_credential=True,
        identity={"X-Request-Id": "r", "Host": "acme-prod"},
        strip=frozenset({"host"}),
    )
    assert sent.has_host
    assert block(sent).getall("Host") == ["acme-prod"]
