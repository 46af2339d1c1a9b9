"""Request hygiene through the real gateway: every ambiguous request is a 400 and never
reaches the upstream; a clean one is forwarded byte for byte."""

from __future__ import annotations

import asyncio

import yarl
from test_hygiene import REFUSED

from harness import Gateway
from rawhttp import exchange, read_response, request


def _address(gw: Gateway) -> tuple[str, int]:
    url = yarl.URL(gw.url)
    assert url.host is not None and url.port is not None
    return url.host, url.port


async def test_every_ambiguous_request_class_is_refused_before_the_upstream(gw: Gateway) -> None:
    """Each row of the hygiene table, sent as raw bytes to the gateway, is a 400."""
    host, port = _address(gw)
    failures = []
    for name, raw, _layer, _reason in REFUSED:
        response = await exchange(host, port, raw)
        if response.status != 400:
            failures.append((name, response.status, response.text[:200]))
    assert failures == []
    assert gw.upstream.seen == []


async def test_clean_encoded_target_reaches_the_upstream_unchanged(gw: Gateway) -> None:
    """An allowed request with encoded characters arrives exactly as the client sent it."""
    host, port = _address(gw)
    target = "/policy/acme-prod/quotes/caf%C3%A9%20q?x=%2F..&y=1"
    headers = [("Host", "gw"), ("Authorization", f"Bearer {gw.tokens['bob']}")]
    response = await exchange(host, port, request("GET", target, headers))
    assert response.status == 200, response.text
    assert gw.upstream.seen[-1]["raw_path"] == target


async def test_expect_continue_is_answered_before_the_body(gw: Gateway) -> None:
    """A client sending Expect: 100-continue gets 100 Continue once allowed, then the answer."""
    host, port = _address(gw)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            request(
                "POST",
                "/policy/acme-prod/quotes",
                [
                    ("Host", "gw"),
                    ("Authorization", f"Bearer {gw.tokens['alice']}"),
                    ("Expect", "100-continue"),
                    ("Content-Length", "7"),
                ],
            )
        )
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b'{"q":1}')
        await writer.drain()
        response = await asyncio.wait_for(read_response(reader), timeout=5)
        assert response.status == 200
    finally:
        writer.close()
    assert gw.upstream.seen[-1]["body"] == '{"q":1}'
