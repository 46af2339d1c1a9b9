"""Say when the upstream cannot be reached, without a log line per request.

At start a probe opens (and closes) one connection to the upstream: if that fails,
one warning says so, and serve goes on (the upstream may simply start later). While
serving, requests that could not connect are reported through a :class:`Throttle`:
the first at once, then at most one line per interval with the count held back. The
first answer after a logged warning says the upstream answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Final

from yarl import URL

from permgate.observability.logs import Throttle

__all__ = ["PROBE_SECONDS", "WARNING_INTERVAL_SECONDS", "UpstreamWatch"]

log: Final = logging.getLogger("permgate.upstream")

WARNING_INTERVAL_SECONDS: Final = 30.0
PROBE_SECONDS: Final = 2.0


class UpstreamWatch:
    """Reports the upstream at ``spec`` (``http://host:port`` or ``unix:/path``)."""

    __slots__ = ("_down", "_spec", "_throttle")

    def __init__(self, spec: str, *, interval: float = WARNING_INTERVAL_SECONDS) -> None:
        self._spec = spec
        self._throttle = Throttle(log, interval)
        self._down = False  # a warning was logged and no answer came since

    async def probe(self, timeout: float = PROBE_SECONDS) -> bool:
        """Connect once; warn (throttled) if that fails. True if it connected."""
        try:
            if self._spec.startswith("unix:"):
                opening = asyncio.open_unix_connection(self._spec.removeprefix("unix:"))
            else:
                url = URL(self._spec)
                opening = asyncio.open_connection(url.raw_host, url.port)
            _, writer = await asyncio.wait_for(opening, timeout)
        except TimeoutError:
            self.unreachable(f"no connection within {timeout:g} s")
            return False
        except OSError as exc:
            # asyncio words a refused connect "Connect call failed (...)": say why.
            self.unreachable(os.strerror(exc.errno) if exc.errno else str(exc))
            return False
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout)
        return True

    def unreachable(self, why: str) -> None:
        """One connection to the upstream failed (``why``); warn unless throttled."""
        logged = self._throttle.warn(
            "upstream %s is unreachable (%s): requests for it are answered 502",
            self._spec,
            why,
            extra={"upstream": self._spec},
        )
        self._down = self._down or logged

    def answered(self) -> None:
        """The upstream answered a request."""
        if self._down:
            self._down = False
            log.info("upstream %s answers again", self._spec, extra={"upstream": self._spec})
