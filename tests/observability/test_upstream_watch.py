"""The upstream probe against real sockets: a listening upstream is quiet, one that
refuses (TCP or a missing unix socket) is one warning naming it and why."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from harness import free_port
from permgate.observability.upstream_watch import UpstreamWatch


def _said(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "permgate.upstream"]


async def test_a_listening_upstream_is_probed_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """The probe connects, closes, and logs nothing."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with caplog.at_level(logging.INFO, logger="permgate.upstream"):
            assert await UpstreamWatch(f"http://127.0.0.1:{port}").probe() is True
    finally:
        server.close()
        await server.wait_closed()
    assert _said(caplog) == []


@pytest.mark.parametrize("kind", ["tcp", "unix"], ids=["refused port", "missing unix socket"])
async def test_an_unreachable_upstream_is_one_warning_naming_it(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, kind: str
) -> None:
    """A refused connection is a warning naming the upstream and the reason; the
    failures that follow within the interval add nothing."""
    spec = f"http://127.0.0.1:{free_port()}" if kind == "tcp" else f"unix:{tmp_path}/app.sock"
    watch = UpstreamWatch(spec)
    with caplog.at_level(logging.INFO, logger="permgate.upstream"):
        assert await watch.probe() is False
        for _ in range(10):
            watch.unreachable("a request could not connect")
    [(level, message)] = _said(caplog)
    why = "Connection refused" if kind == "tcp" else "No such file or directory"
    assert level == "WARNING"
    assert message == f"upstream {spec} is unreachable ({why}): requests for it are answered 502"


async def test_the_first_answer_after_a_warning_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a logged warning, the first answer says so; later answers say nothing."""
    watch = UpstreamWatch("http://127.0.0.1:9")
    with caplog.at_level(logging.INFO, logger="permgate.upstream"):
        watch.answered()
        watch.unreachable("a request could not connect")
        watch.answered()
        watch.answered()
    assert [level for level, _ in _said(caplog)] == ["WARNING", "INFO"]
    assert _said(caplog)[1][1] == "upstream http://127.0.0.1:9 answers again"
