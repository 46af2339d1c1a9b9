"""What the gateway listener does with requests an attacker shapes, on the wire.

Every case is sent as raw bytes to a real gateway (tests/support/harness.py) in front of the
real echo upstream, so nothing is normalised on the way:

- ``Host`` must be a valid ``host[:port]`` before anything is routed or forwarded;
- the tenant headers the map declares reach the upstream only as the decided tenant;
- requests the HTTP parser refuses get the gateway's JSON answer, counted and audited,
  and neither the answer nor any log line carries a byte of the request;
- suspect framing ends the connection;
- a client that stops sending its head or its body is answered 408 and holds nothing
  upstream, so stalled clients never keep allowed requests from the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yarl

from gateway_procs import echo_upstream, serve_sqlite
from harness import TEST_MAP, Gateway, eventually, start_gateway
from permgate.gateway.http1 import KEEPALIVE_SECONDS, Listener
from rawhttp import RawResponse, exchange, exchange_to_close, read_response, request

SECRET = "pgt_SECRETtokenVALUE0123456789"
COOKIE = "session=COOKIEsecretVALUE"
QUICK = 0.5  # upstream_timeout_seconds of the gateways that test timeouts


def address(gw: Gateway) -> tuple[str, int]:
    url = yarl.URL(gw.url)
    assert url.host is not None and url.port is not None
    return url.host, url.port


def bearer(secret: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {secret}")


def body_of(response: RawResponse) -> dict[str, Any]:
    assert response.headers.get("Content-Type", "").startswith("application/json")
    parsed: dict[str, Any] = orjson.loads(response.body)
    return parsed


async def decisions_counted(gw: Gateway, reason: str, endpoint: str = "unrouted") -> float:
    """permgate_decisions_total for one deny reason, as the admin listener serves it."""
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(gw.admin_url + "/metrics")).text()
    line = re.search(
        r'^permgate_decisions_total\{decision="deny",endpoint="'
        + re.escape(endpoint)
        + r'",reason="'
        + re.escape(reason)
        + r'"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(line.group(1)) if line else 0.0


def audited(gw: Gateway, reason: str) -> list[dict[str, Any]]:
    events = [orjson.loads(line) for line in gw.audit_lines()]
    return [e for e in events if e.get("event") == "decision" and e.get("reason") == reason]


@pytest.fixture
async def quick_gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway whose client and upstream timeouts are QUICK seconds."""
    async with start_gateway(tmp_path, upstream_timeout_seconds=QUICK) as gateway:
        yield gateway


# ----------------------------------------------------------------------------- Host

# id, Host field lines as sent (each becomes one header line)
BAD_HOSTS: list[tuple[str, list[str]]] = [
    ("path", ["x/policy/globex-prod/quotes/Q-1"]),
    ("path-and-query", ["x/policy/globex-prod/quotes?"]),
    ("query", ["gw?tenant=globex-prod"]),
    ("fragment", ["gw#/policy/globex-prod"]),
    ("userinfo", ["alice@gw"]),
    ("space", ["g w"]),
    ("percent-encoded", ["gw%2fpolicy"]),
    ("lone-percent", ["gw%"]),
    ("backslash", ["gw\\policy"]),
    ("sub-delims", ["gw;a=b"]),
    ("empty", [""]),
    ("empty-port", ["gw:"]),
    ("port-too-large", ["gw:70000"]),
    ("ipv6-zone", ["[fe80::1%25eth0]"]),
    ("ipvfuture", ["[v1.x]"]),
    ("two-hosts", ["gw", "other"]),
    ("control-byte", ["gw\x01x"]),
]


@pytest.mark.parametrize("hosts", [c[1] for c in BAD_HOSTS], ids=[c[0] for c in BAD_HOSTS])
async def test_invalid_host_is_refused_before_routing(gw: Gateway, hosts: list[str]) -> None:
    """A Host outside host[:port] is a 400 JSON refusal and nothing reaches the upstream,
    even on a request that would be allowed."""
    raw = request(
        "GET",
        "/policy/acme-prod/quotes/Q-1",
        [*(("Host", h) for h in hosts), bearer(gw.tokens["bob"])],
    )
    response = await exchange(*address(gw), raw)
    assert response.status == 400
    assert body_of(response)["error"] == "bad_request"
    # A control byte is refused by the parser itself, before Host is looked at.
    assert body_of(response)["reason"] in ("invalid_host", "malformed_request")
    assert gw.upstream.seen == []


async def test_missing_host_on_http11_is_refused(gw: Gateway) -> None:
    """HTTP/1.1 without Host is a 400 invalid_host (RFC 9112 §3.2)."""
    raw = b"GET /health HTTP/1.1\r\n\r\n"
    response = await exchange(*address(gw), raw)
    assert (response.status, body_of(response)["reason"]) == (400, "invalid_host")
    assert gw.upstream.seen == []


@pytest.mark.parametrize("host", ["gw", "gw:8080", "127.0.0.1:80", "[::1]:8443", "api.example"])
async def test_valid_host_is_forwarded_as_host_and_forwarded_host(gw: Gateway, host: str) -> None:
    """A valid Host reaches the upstream unchanged, and X-Forwarded-Host is that Host."""
    raw = request("GET", "/policy/acme-prod/quotes/Q-1", [("Host", host), bearer(gw.tokens["bob"])])
    response = await exchange(*address(gw), raw)
    assert response.status == 200, response.text
    seen = gw.upstream.seen[-1]["headers"]
    assert (seen["Host"], seen["X-Forwarded-Host"]) == (host, host)


async def test_http10_without_host_gets_no_forwarded_host(gw: Gateway) -> None:
    """HTTP/1.0 may omit Host: the request passes and no X-Forwarded-Host is invented."""
    raw = b"GET /health HTTP/1.0\r\n\r\n"
    response = await exchange(*address(gw), raw)
    assert response.status == 200
    assert "X-Forwarded-Host" not in gw.upstream.seen[-1]["headers"]


# ----------------------------------------------------------------------------- tenant headers


def tenant_values(seen: dict[str, Any], name: str = "x-tenant") -> list[str]:
    """The values the upstream received under ``name``, whatever the spelling's case."""
    headers: dict[str, str] = seen["headers"]
    return [v for k, v in headers.items() if k.lower() == name]


# id, method, target, token, client's tenant header line, tenant the upstream must see
TENANT_CASES: list[tuple[str, str, str, str, tuple[str, str], list[str]]] = [
    (
        "path-tenant-endpoint",
        "GET",
        "/policy/acme-prod/quotes/Q-1",
        "bob",
        ("X-Tenant", "globex-prod"),
        [],
    ),
    (
        "path-tenant-endpoint-lower-case",
        "GET",
        "/policy/acme-prod/quotes/Q-1",
        "bob",
        ("x-tenant", "globex-prod"),
        [],
    ),
    (
        "path-tenant-endpoint-upper-case",
        "GET",
        "/policy/acme-prod/quotes/Q-1",
        "bob",
        ("X-TENANT", "globex-prod"),
        [],
    ),
    ("no-tenant-endpoint", "POST", "/auth/tokens", "root", ("X-Tenant", "globex-prod"), []),
    ("public-endpoint", "GET", "/health", "bob", ("X-Tenant", "globex-prod"), []),
    (
        "header-tenant-endpoint",
        "GET",
        "/legacy/quotes",
        "bob",
        ("x-tenant", "acme-prod"),
        ["acme-prod"],
    ),
]


@pytest.mark.parametrize(
    ("method", "target", "who", "sent", "expected"),
    [c[1:] for c in TENANT_CASES],
    ids=[c[0] for c in TENANT_CASES],
)
async def test_upstream_sees_only_the_decided_tenant(
    gw: Gateway,
    method: str,
    target: str,
    who: str,
    sent: tuple[str, str],
    expected: list[str],
) -> None:
    """The map's tenant header reaches the upstream only as the tenant that was
    authorised: dropped where the endpoint's tenant comes from elsewhere (or nowhere),
    set once to the decided tenant where it comes from that header."""
    raw = request(method, target, [("Host", "gw"), bearer(gw.tokens[who]), sent])
    response = await exchange(*address(gw), raw)
    assert response.status == 200, response.text
    assert tenant_values(gw.upstream.seen[-1]) == expected


async def test_default_tenant_header_is_stripped_even_when_no_entry_uses_it(
    gw: Gateway, tmp_path: Path
) -> None:
    """A header named only in the map's defaults is still a tenant header: a client's
    copy never reaches the upstream."""
    before = gw.runtime.gateway.endpoint_map.sha256
    new_map = TEST_MAP.replace(
        "  tenant: {path_param: tenantLocator}",
        "  tenant: {header: X-Account-Tenant}",
    ).replace(
        '"/policy/{tenantLocator}/quotes/{locator}",\n     permissions: [quotes.read]}',
        '"/policy/{tenantLocator}/quotes/{locator}",\n     permissions: [quotes.read],'
        " tenant: {path_param: tenantLocator}}",
    )
    (tmp_path / "endpoint_map.yaml").write_text(new_map, encoding="utf-8")
    await eventually(
        lambda: gw.runtime.gateway.endpoint_map.sha256 != before, "the new map to load"
    )
    raw = request(
        "GET",
        "/policy/acme-prod/quotes/Q-1",
        [("Host", "gw"), bearer(gw.tokens["bob"]), ("X-Account-Tenant", "globex-prod")],
    )
    response = await exchange(*address(gw), raw)
    assert response.status == 200, response.text
    assert tenant_values(gw.upstream.seen[-1], "x-account-tenant") == []


# ----------------------------------------------------------------------------- framing


def http10(headers: list[tuple[str, str]], body: bytes) -> bytes:
    """An HTTP/1.0 request that asks for keep-alive, so a pipelined one may follow."""
    lines = [
        "POST /policy/acme-prod/quotes HTTP/1.0",
        "Connection: keep-alive",
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


NEXT = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"  # pipelined after the suspect one

# id, raw request bytes, expected reason
SUSPECT_FRAMING: list[tuple[str, bytes, str]] = [
    (
        "http10-chunked",
        http10([("Transfer-Encoding", "chunked")], b"1\r\nz\r\n0\r\n\r\n"),
        "unsupported_transfer_coding",
    ),
    (
        "http10-chunked-upper-case",
        http10([("TRANSFER-ENCODING", "CHUNKED")], b"1\r\nz\r\n0\r\n\r\n"),
        "unsupported_transfer_coding",
    ),
    (
        "http10-gzip-chunked",
        http10([("Transfer-Encoding", "gzip, chunked")], b"1\r\nz\r\n0\r\n\r\n"),
        "unsupported_transfer_coding",
    ),
    (
        "http10-chunked-and-length",
        http10([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"),
        "malformed_request",
    ),
    (
        "http11-length-and-chunked",
        request(
            "POST",
            "/policy/acme-prod/quotes",
            [("Host", "gw"), ("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            b"0\r\n\r\n",
        ),
        "malformed_request",
    ),
    (
        "http11-two-lengths",
        request(
            "POST",
            "/policy/acme-prod/quotes",
            [("Host", "gw"), ("Content-Length", "1"), ("Content-Length", "2")],
            b"zz",
        ),
        "malformed_request",
    ),
    (
        "http11-gzip-coding",
        request(
            "POST",
            "/policy/acme-prod/quotes",
            [("Host", "gw"), ("Transfer-Encoding", "gzip, chunked")],
            b"1\r\nz\r\n0\r\n\r\n",
        ),
        "unsupported_transfer_coding",
    ),
]


@pytest.mark.parametrize(
    ("raw", "reason"), [c[1:] for c in SUSPECT_FRAMING], ids=[c[0] for c in SUSPECT_FRAMING]
)
async def test_suspect_framing_is_refused_and_ends_the_connection(
    gw: Gateway, raw: bytes, reason: str
) -> None:
    """A request whose framing is in doubt is a 400 with Connection: close, the
    connection ends after the answer, and the request pipelined behind it is never read."""
    response, rest = await exchange_to_close(*address(gw), raw + NEXT)
    assert (response.status, body_of(response)["reason"]) == (400, reason)
    assert response.headers["Connection"] == "close"
    assert rest == b""
    assert gw.upstream.seen == []


# ----------------------------------------------------------------------------- parser refusals


def line(*header_lines: bytes, start: bytes = b"GET /health HTTP/1.1") -> bytes:
    return b"\r\n".join([start, *header_lines]) + b"\r\n\r\n"


AUTH = f"Authorization: Bearer {SECRET}".encode()
CRED = b"Host: gw\r\n" + AUTH + b"\r\nCookie: " + COOKIE.encode()

# id, raw request bytes (each carries the SECRET credential or the COOKIE), reason
UNREADABLE: list[tuple[str, bytes, str]] = [
    ("bare-lf", b"GET /health HTTP/1.1\nHost: gw\n" + AUTH + b"\n\n", "malformed_request"),
    ("bare-lf-after-header", line(b"Host: gw\n" + AUTH), "malformed_request"),
    ("bare-cr", line(b"Host: gw\r" + AUTH), "malformed_request"),
    ("obs-fold", line(CRED, b" folded"), "malformed_request"),
    ("control-byte-in-value", line(b"Host: gw", AUTH + b"\x01"), "malformed_request"),
    ("nul-in-value", line(b"Host: gw", AUTH + b"\x00"), "malformed_request"),
    (
        "space-before-colon",
        line(b"Host: gw", f"Authorization : Bearer {SECRET}".encode()),
        "malformed_request",
    ),
    ("space-in-name", line(b"Host: gw", b"X Y: 1", AUTH), "malformed_request"),
    (
        "huge-cookie",
        line(b"Host: gw", AUTH, ("Cookie: " + COOKIE * 600).encode()),
        "headers_too_large",
    ),
    ("huge-header-name", line(b"Host: gw", AUTH, b"X" * 9000 + b": 1"), "headers_too_large"),
    ("huge-target", line(CRED, start=b"GET /" + b"a" * 9000 + b" HTTP/1.1"), "headers_too_large"),
    ("too-many-headers", line(CRED, *(b"X-%d: 1" % i for i in range(200))), "headers_too_large"),
    ("http09", b"GET /health\r\n" + CRED + b"\r\n\r\n", "unsupported_http_version"),
    ("http12", line(CRED, start=b"GET /health HTTP/1.2"), "unsupported_http_version"),
    ("http20", line(CRED, start=b"GET /health HTTP/2.0"), "unsupported_http_version"),
    ("http30", line(CRED, start=b"GET /health HTTP/3.0"), "unsupported_http_version"),
    ("lower-case-version", line(CRED, start=b"GET /health http/1.1"), "malformed_request"),
    ("bad-method", line(CRED, start=b"G(T /health HTTP/1.1"), "malformed_request"),
    ("two-lengths", line(CRED, b"Content-Length: 1", b"Content-Length: 2"), "malformed_request"),
    ("signed-length", line(CRED, b"Content-Length: +1"), "malformed_request"),
    ("two-hosts", line(CRED, b"Host: other"), "invalid_host"),
]
UNREADABLE_IDS = [c[0] for c in UNREADABLE]
UNREADABLE_ROWS = [c[1:] for c in UNREADABLE]


@pytest.mark.parametrize(("raw", "reason"), UNREADABLE_ROWS, ids=UNREADABLE_IDS)
async def test_unreadable_request_gets_the_json_refusal_and_a_closed_connection(
    gw: Gateway, raw: bytes, reason: str
) -> None:
    """The gateway's JSON error shape with a reason from the closed set, as HTTP/1.1
    with Connection: close, and the connection ends."""
    response, rest = await exchange_to_close(*address(gw), raw)
    assert response.status == 400
    assert response.head.startswith(b"HTTP/1.1 400 ")
    body = body_of(response)
    assert set(body) == {"error", "reason", "request_id"}
    assert (body["error"], body["reason"]) == ("bad_request", reason)
    assert response.headers["Connection"] == "close"
    assert rest == b""
    assert gw.upstream.seen == []


@pytest.mark.parametrize(("raw", "reason"), UNREADABLE_ROWS, ids=UNREADABLE_IDS)
async def test_unreadable_request_is_echoed_nowhere(
    gw: Gateway, raw: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the answer nor any log record (DEBUG included) nor the audit event
    carries the credential, the cookie or the request's bytes."""
    caplog.set_level(logging.DEBUG)
    response = await exchange(*address(gw), raw)
    assert response.status == 400
    await eventually(lambda: audited(gw, reason), "the audit event")
    for secret in (SECRET, COOKIE, "SECRET", "COOKIE"):
        assert secret.encode() not in response.raw
        assert secret not in gw.audit.getvalue()
        leaked = [r.getMessage() for r in caplog.records if secret in _record_text(r)]
        assert leaked == []


def _record_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        text += repr(record.exc_info[1]) + str(record.exc_info[1])
    return text


@pytest.mark.parametrize(("raw", "reason"), UNREADABLE_ROWS, ids=UNREADABLE_IDS)
async def test_unreadable_request_is_counted_and_audited(
    gw: Gateway, raw: bytes, reason: str
) -> None:
    """Each refusal counts once in permgate_decisions_total (endpoint "unrouted") and
    is one audit decision event with its reason and status."""
    await exchange(*address(gw), raw)
    events = await eventually(lambda: audited(gw, reason), "the audit event")
    assert len(events) == 1
    assert (events[0]["decision"], events[0]["status"]) == ("deny", 400)
    assert events[0]["endpoint"] == "unrouted"
    assert events[0]["client_ip"] == "127.0.0.1"
    assert await decisions_counted(gw, reason) == 1.0


# id, a chunked body whose framing breaks after the head was accepted
BROKEN_BODIES: list[tuple[str, bytes]] = [
    ("chunk-size-not-hex", b"zz" + SECRET.encode() + b"\r\nabc\r\n0\r\n\r\n"),
    ("chunk-longer-than-its-size", b"5\r\n" + SECRET.encode() + b"\r\n0\r\n\r\n"),
    ("chunk-size-overflow", b"ffffffffffffffffffff\r\n" + SECRET.encode() + b"\r\n"),
    ("chunk-without-crlf", b"3\r\nabc" + SECRET.encode() + b"\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("body", [c[1] for c in BROKEN_BODIES], ids=[c[0] for c in BROKEN_BODIES])
async def test_broken_body_is_refused_without_echo(
    gw: Gateway, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """An allowed request whose chunked body breaks its framing after the head was
    accepted is a 400 malformed_request that closes the connection; the upstream gets
    nothing, and the body's bytes are in no answer, audit event or log record."""
    caplog.set_level(logging.DEBUG)
    head = request(
        "POST",
        "/policy/acme-prod/quotes",
        [("Host", "gw"), bearer(gw.tokens["alice"]), ("Transfer-Encoding", "chunked")],
    )
    reader, writer = await asyncio.open_connection(*address(gw))
    try:
        writer.write(head)
        await asyncio.sleep(0.2)  # the head is read and decided before the body comes
        writer.write(body)
        response = await asyncio.wait_for(read_response(reader), 5)
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert (response.status, body_of(response)["reason"]) == (400, "malformed_request")
    assert (response.headers["Connection"], rest) == ("close", b"")
    assert gw.upstream.seen == []
    events = await eventually(lambda: audited(gw, "malformed_request"), "the audit event")
    assert events[0]["endpoint"] == "quotes.create"
    assert SECRET.encode() not in response.raw
    assert SECRET not in gw.audit.getvalue()
    assert [r.getMessage() for r in caplog.records if SECRET in _record_text(r)] == []


# ----------------------------------------------------------------------------- timeouts

ALLOWED_POST = [("Host", "gw"), bearer("{alice}"), ("Content-Type", "application/json")]


def allowed_post(gw: Gateway, extra: list[tuple[str, str]], body: bytes = b"") -> bytes:
    headers = [(k, v.format(alice=gw.tokens["alice"])) for k, v in ALLOWED_POST]
    return request("POST", "/policy/acme-prod/quotes", [*headers, *extra], body)


# id, the bytes a client sends before it stalls
PARTIAL_HEADS: list[tuple[str, bytes]] = [
    ("mid-request-line", b"GET /policy/acme-prod/quo"),
    ("after-request-line", b"GET /health HTTP/1.1\r\n"),
    ("mid-headers", b"GET /health HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer pgt_x"),
    ("before-final-crlf", b"GET /health HTTP/1.1\r\nHost: gw\r\n"),
]


@pytest.mark.parametrize(
    "partial", [c[1] for c in PARTIAL_HEADS], ids=[c[0] for c in PARTIAL_HEADS]
)
async def test_stalled_head_is_answered_408(quick_gw: Gateway, partial: bytes) -> None:
    """A head that stops half-way is answered 408 request_timeout (JSON) after the
    timeout, and the connection ends."""
    started = time.monotonic()
    response, rest = await exchange_to_close(*address(quick_gw), partial, timeout=QUICK * 10)
    waited = time.monotonic() - started
    assert response.status == 408
    assert body_of(response)["reason"] == "request_timeout"
    assert response.headers["Connection"] == "close"
    assert rest == b""
    assert QUICK * 0.8 <= waited < QUICK * 6


async def test_trickled_head_is_answered_408(quick_gw: Gateway) -> None:
    """The head timeout bounds the whole head, not each byte: a client trickling its
    head slower than it may take in total is answered 408 all the same."""
    reader, writer = await asyncio.open_connection(*address(quick_gw))

    async def trickle() -> None:
        for byte in b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(QUICK / 5)

    started = time.monotonic()
    sender = asyncio.create_task(trickle())
    try:
        response = await asyncio.wait_for(read_response(reader), QUICK * 10)
        assert (response.status, body_of(response)["reason"]) == (408, "request_timeout")
        assert time.monotonic() - started < QUICK * 4
    finally:
        sender.cancel()
        writer.close()


async def test_idle_keep_alive_connections_are_bounded(gw: Gateway) -> None:
    """Connections of the gateway listener idle at most KEEPALIVE_SECONDS (not aiohttp's
    hour), whatever the head timeout."""
    protocol = Listener(gw.runtime.gateway, head_timeout=5.0).protocol()
    assert protocol.keepalive_seconds == KEEPALIVE_SECONDS <= 75.0


async def test_stalled_head_after_a_keep_alive_request_is_answered_408(quick_gw: Gateway) -> None:
    """On a kept-alive connection the next head is timed from its first byte."""
    reader, writer = await asyncio.open_connection(*address(quick_gw))
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
        first = await asyncio.wait_for(read_response(reader), 5)
        assert first.status == 200
        writer.write(b"GET /health HTTP/1.1\r\nHo")
        second = await asyncio.wait_for(read_response(reader), QUICK * 10)
        assert (second.status, body_of(second)["reason"]) == (408, "request_timeout")
    finally:
        writer.close()


async def test_idle_keep_alive_connection_gets_no_408(quick_gw: Gateway) -> None:
    """A connection that sends nothing after its answer is not a stalled head: it is
    still usable after several head timeouts."""
    reader, writer = await asyncio.open_connection(*address(quick_gw))
    try:
        for _ in range(2):
            writer.write(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
            response = await asyncio.wait_for(read_response(reader), 5)
            assert response.status == 200
            await asyncio.sleep(QUICK * 3)
    finally:
        writer.close()


async def test_stalled_head_is_counted_and_audited(quick_gw: Gateway) -> None:
    """A 408 for a stalled head counts as a deny with reason request_timeout and is audited."""
    await exchange(*address(quick_gw), b"GET /health HTTP/1.1\r\n", timeout=QUICK * 10)
    events = await eventually(lambda: audited(quick_gw, "request_timeout"), "the audit event")
    assert events[0]["status"] == 408
    assert await decisions_counted(quick_gw, "request_timeout") == 1.0


# id, headers after the allowed POST's, the body bytes sent before the stall
STALLED_BODIES: list[tuple[str, list[tuple[str, str]], bytes]] = [
    ("length-nothing-sent", [("Content-Length", "10")], b""),
    ("length-part-sent", [("Content-Length", "10")], b'{"q":'),
    ("chunked-nothing-sent", [("Transfer-Encoding", "chunked")], b""),
    ("chunked-part-sent", [("Transfer-Encoding", "chunked")], b'5\r\n{"q":\r\n'),
]


@pytest.mark.parametrize(
    ("extra", "sent"), [c[1:] for c in STALLED_BODIES], ids=[c[0] for c in STALLED_BODIES]
)
async def test_stalled_body_is_answered_408_without_reaching_the_upstream(
    quick_gw: Gateway, extra: list[tuple[str, str]], sent: bytes
) -> None:
    """An allowed request whose body stops arriving is answered 408, counted and
    audited; it never took an upstream connection, and the upstream saw nothing."""
    response, _ = await exchange_to_close(
        *address(quick_gw), allowed_post(quick_gw, extra, sent), timeout=QUICK * 10
    )
    assert (response.status, body_of(response)["reason"]) == (408, "request_timeout")
    assert response.headers["Connection"] == "close"
    assert quick_gw.upstream.seen == []
    assert quick_gw.runtime.upstream.open_connections == 0
    events = await eventually(lambda: audited(quick_gw, "request_timeout"), "the audit event")
    assert (events[0]["status"], events[0]["endpoint"]) == (408, "quotes.create")


async def test_body_stalled_mid_stream_releases_its_upstream_connection(quick_gw: Gateway) -> None:
    """A large upload that stops half-way is answered 408 and the upstream connection it
    was streaming on is closed, not kept."""
    token = quick_gw.tokens["alice"]
    head = request(
        "PUT",
        "/files/acme-prod/upload",
        [("Host", "gw"), bearer(token), ("Content-Length", str(1024 * 1024))],
    )
    reader, writer = await asyncio.open_connection(*address(quick_gw))
    try:
        writer.write(head + b"x" * (256 * 1024))
        await writer.drain()
        await eventually(
            lambda: quick_gw.runtime.upstream.open_connections == 1, "the upload to go upstream"
        )
        response = await asyncio.wait_for(read_response(reader), QUICK * 10)
        assert (response.status, body_of(response)["reason"]) == (408, "request_timeout")
    finally:
        writer.close()
    await eventually(
        lambda: quick_gw.runtime.upstream.open_connections == 0, "the upstream connection to close"
    )


async def test_stalled_clients_never_keep_allowed_requests_from_the_upstream(
    tmp_path: Path,
) -> None:
    """200 clients that send a head with Content-Length and no body hold no upstream
    connection: allowed requests meanwhile succeed at once, and each stalled client is
    answered 408 once the timeout passes."""
    timeout = 2.0
    async with start_gateway(tmp_path, upstream_timeout_seconds=timeout) as gw:
        host, port = address(gw)
        stalled: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(200):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(allowed_post(gw, [("Content-Length", "100")]))
                stalled.append((reader, writer))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            async with aiohttp.ClientSession() as session:
                for _ in range(20):
                    async with session.get(
                        gw.url + "/policy/acme-prod/quotes/Q-1",
                        headers={"Authorization": f"Bearer {gw.tokens['bob']}"},
                    ) as response:
                        assert response.status == 200
            assert time.monotonic() - started < timeout  # never waited for a free connection
            assert gw.runtime.upstream.open_connections <= 1
            answers = await asyncio.wait_for(
                asyncio.gather(*(read_response(r) for r, _ in stalled)), timeout * 5
            )
            assert {a.status for a in answers} == {408}
        finally:
            for _, writer in stalled:
                writer.close()
        assert all(s["method"] == "GET" for s in gw.upstream.seen)


async def test_slow_but_steady_body_is_forwarded(quick_gw: Gateway) -> None:
    """The body timeout is an idle timeout: a body that keeps arriving, more slowly in
    total than the timeout, is forwarded whole."""
    reader, writer = await asyncio.open_connection(*address(quick_gw))
    try:
        writer.write(allowed_post(quick_gw, [("Content-Length", "9")]))
        for part in (b'{"a"', b":1,", b"2}"):
            await asyncio.sleep(QUICK / 2)
            writer.write(part)
        response = await asyncio.wait_for(read_response(reader), QUICK * 10)
        assert response.status == 200, response.text
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert quick_gw.upstream.seen[-1]["body"] == '{"a":1,2}'


# ----------------------------------------------------------------------------- serve --workers 2


async def test_workers_answer_unreadable_requests_without_logging_them(tmp_path: Path) -> None:
    """Under `permgate serve --workers 2`, logging at DEBUG, every unreadable request
    gets the JSON refusal and is audited, and the process log never holds the credential
    or the cookie."""
    extra = "log_level: DEBUG\nupstream_timeout_seconds: 1\n"
    async with (
        echo_upstream() as upstream,
        serve_sqlite(tmp_path, upstream, workers=2, extra=extra) as served,
    ):
        url = yarl.URL(served.url)
        assert url.host is not None and url.port is not None
        for _, raw, reason in UNREADABLE:
            response = await exchange(url.host, url.port, raw)
            assert (response.status, body_of(response)["reason"]) == (400, reason)
            assert SECRET.encode() not in response.raw
        expected = {reason for _, _, reason in UNREADABLE}

        def reasons() -> set[str]:
            return {e.get("reason") for e in served.events() if e.get("event") == "decision"}

        await eventually(lambda: expected <= reasons(), "every refusal to be audited")
        log = served.log.read_text(encoding="utf-8", errors="replace")
        assert "refused an unreadable request" in log  # DEBUG lines were written
        for secret in (SECRET, COOKIE, "SECRET", "COOKIE"):
            assert secret not in log
            assert all(secret not in path.read_text() for path in served.audit_files())


async def test_workers_answer_a_stalled_body_408(tmp_path: Path) -> None:
    """Under `permgate serve --workers 2` a stalled body is answered 408 and audited."""
    extra = "upstream_timeout_seconds: 1\n"
    async with (
        echo_upstream() as upstream,
        serve_sqlite(tmp_path, upstream, workers=2, extra=extra) as served,
    ):
        url = yarl.URL(served.url)
        assert url.host is not None and url.port is not None
        raw = request(
            "POST",
            "/policy/acme-prod/quotes",
            [("Host", "gw"), bearer(served.tokens["alice"]), ("Content-Length", "10")],
        )
        response, _ = await exchange_to_close(url.host, url.port, raw, timeout=10)
        assert (response.status, body_of(response)["reason"]) == (408, "request_timeout")

        def stalled() -> list[dict[str, Any]]:
            return [e for e in served.events() if e.get("reason") == "request_timeout"]

        events = await eventually(stalled, "the 408 to be audited")
        assert events[0]["status"] == 408
