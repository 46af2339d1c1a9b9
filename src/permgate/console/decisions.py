"""The console's view of recent gateway decisions.

The gateway writes each decision to its audit sink as a JSON line; :meth:`RecentDecisions.tap`
puts a tee in front of that sink that also keeps the last lines in memory, so the
Audit page can show what this process decided lately without a second log. Lines are
parsed only when the page is read, so the request path pays one deque append.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson

from permgate.observability.audit import AuditLog, AuditSink

__all__ = ["RecentDecisions"]

KEEP: Final = 1000


class _Tee:
    """An audit sink that hands each written line to ``keep`` before the real sink."""

    def __init__(self, sink: AuditSink, keep: Callable[[bytes], None]) -> None:
        self._sink = sink
        self._keep = keep

    def open(self) -> None:
        self._sink.open()

    def write(self, lines: Sequence[bytes]) -> None:
        self._sink.write(lines)
        for line in lines:
            self._keep(line)

    def close(self) -> None:
        self._sink.close()


class RecentDecisions:
    """The last :data:`KEEP` audit lines of this process, read as decision events."""

    def __init__(self, keep: int = KEEP) -> None:
        self._lines: collections.deque[bytes] = collections.deque(maxlen=keep)

    @classmethod
    def tap(cls, audit: AuditLog, keep: int = KEEP) -> RecentDecisions:
        """Keep what ``audit`` writes from now on (its sink is wrapped, not replaced)."""
        recent = cls(keep)
        audit.sink = _Tee(audit.sink, recent._lines.append)
        return recent

    def events(self, account: str) -> list[dict[str, Any]]:
        """Decision events of ``account``'s principals, newest first."""
        found: list[dict[str, Any]] = []
        for line in reversed(self._lines):
            if b'"decision"' not in line:
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            principal = event.get("principal") if isinstance(event, dict) else None
            if event.get("event") != "decision" or not isinstance(principal, dict):
                continue
            if principal.get("account") == account:
                found.append(event)
        return found
