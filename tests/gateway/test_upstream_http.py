"""The lean upstream client's header-name classification (the relay's no-pass head)."""

from __future__ import annotations

from permgate.gateway import upstream_http
from permgate.gateway.hygiene import HOP_BY_HOP
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
