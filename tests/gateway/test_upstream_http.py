"""The lean upstream client's header-name classification (the relay's no-pass head) and
the request head it writes."""

from __future__ import annotations

import pytest

from permgate.gateway import upstream_http
from permgate.gateway.hygiene import HOP_BY_HOP, ForwardHeaders
from permgate.gateway.upstream_http import (
    HEADER_CODING,
    HEADER_DATE,
    HEADER_HOP,
    HEADER_LENGTH,
)


def test_header_kinds_whatever_the_case() -> None:
    """A name's kind does not depend on how the upstream spells it."""
    kind = upstream_http._header_kind
    assert kind(b"Content-Length") == kind(b"CONTENT-LENGTH") == HEADER_LENGTH
    assert kind(b"date") == kind(b"Date") == HEADER_DATE
    assert kind(b"transfer-Encoding") == HEADER_HOP | HEADER_CODING
    for name in HOP_BY_HOP:
        assert kind(name.upper().encode()) & HEADER_HOP
    assert kind(b"X-End-To-End") == kind(b"Content-Type") == 0


def test_header_kind_cache_is_bounded() -> None:
    """An upstream sending ever new names cannot grow the cache without limit."""
    saved = dict(upstream_http._KINDS)
    try:
        for i in range(upstream_http._KINDS_MAX + 10):
            upstream_http._header_kind(b"X-Name-%d" % i)
        assert len(upstream_http._KINDS) <= upstream_http._KINDS_MAX
        assert upstream_http._header_kind(b"X-Name-Past-The-Bound") == 0
    finally:
        upstream_http._KINDS.clear()
        upstream_http._KINDS.update(saved)


def _forward(lines: list[tuple[str, str]], *, host: bool = True) -> ForwardHeaders:
    headers = ForwardHeaders(lines)
    headers.has_host = host
    return headers


def test_request_head_is_the_head_as_given() -> None:
    """The request line, then the lines in order; Host added only when absent."""
    head = upstream_http.request_head(
        "GET", "/a?b=1", _forward([("Host", "up"), ("X-A", "1")]), default_host="d", body=False
    )
    assert head == b"GET /a?b=1 HTTP/1.1\r\nHost: up\r\nX-A: 1\r\n\r\n"
    head = upstream_http.request_head(
        "DELETE", "/a", _forward([], host=False), default_host="d", body=False
    )
    assert head == b"DELETE /a HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "target", "lines", "default_host"),
    [
        ("GET", "/a", [("X-A", "1\r\nX-B: 2")], "d"),
        ("GET", "/a", [("X-A", "1\nX-B: 2")], "d"),
        ("GET", "/a", [("X-A\r", "1")], "d"),
        ("GET", "/a\r\nX-B: 2", [], "d"),
        ("GET", "/a b", [], "d"),
        ("GET\n", "/a", [], "d"),
        ("GET", "/a", [], "d\r\nX-B: 2"),
    ],
    ids=[
        "crlf-value",
        "lf-value",
        "cr-name",
        "crlf-target",
        "space-target",
        "lf-method",
        "crlf-host",
    ],
)
def test_request_head_refuses_what_would_split_the_request(
    method: str, target: str, lines: list[tuple[str, str]], default_host: str
) -> None:
    """A CR or LF anywhere but the CRLFs the head is made of (or a space in the target)
    is refused, never sent."""
    with pytest.raises(ValueError, match="CR, LF or space"):
        upstream_http.request_head(
            method, target, _forward(lines, host=False), default_host=default_host, body=False
        )
