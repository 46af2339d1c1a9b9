"""The console's view of recent gateway decisions, across every worker of a serve.

The gateway writes each decision to its audit sink as a JSON line; :meth:`RecentDecisions.tap`
puts a tee in front of that sink that also keeps the last lines in memory, so the
Audit page can show what was decided lately without a second log. Lines are parsed only
when the page is read, so the request path pays one deque append.

Under ``serve --workers N`` a console request lands on any one worker, which alone saw
only its share of the traffic. The serving parent therefore names a directory
(:data:`SHARE_ENV`); each worker's tee also appends its lines to its own file there
(in the audit writer's batches, compacted to the last lines now and then), and the Audit
page reads every worker's file. One process reads only its memory.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from permgate.observability.audit import AuditLog, AuditSink

__all__ = ["KEEP", "SHARE_ENV", "RecentDecisions", "create_share_dir", "remove_share_dir"]

KEEP: Final = 1000
SHARE_ENV: Final = "_PERMGATE_RECENT_DECISIONS"
_PREFIX: Final = "worker-"


def create_share_dir() -> str:
    """A fresh directory for the workers' recent decisions (the serving parent's)."""
    return tempfile.mkdtemp(prefix="permgate-decisions-")


def remove_share_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class _Tee:
    """An audit sink that hands each written batch to the console after the real sink."""

    def __init__(self, sink: AuditSink, recent: RecentDecisions) -> None:
        self._sink = sink
        self._recent = recent

    def open(self) -> None:
        self._sink.open()

    def write(self, lines: Sequence[bytes]) -> None:
        self._sink.write(lines)
        self._recent.keep(lines)

    def close(self) -> None:
        self._sink.close()
        self._recent.close()


class _WorkerFile:
    """This worker's recent lines on disk, for the consoles of the other workers.

    Appends go to the end; once the file holds twice the lines kept, it is rewritten
    with the last ``keep`` (a new file renamed over the old one, so a reader sees one
    or the other, never half)."""

    def __init__(self, directory: Path, keep: int) -> None:
        self._path = directory / f"{_PREFIX}{os.getpid()}.jsonl"
        self._keep = keep
        self._file: BinaryIO = open(self._path, "ab")  # noqa: SIM115 - held open
        self._written = 0

    def append(self, lines: Sequence[bytes], kept: Iterable[bytes]) -> None:
        try:
            self._file.write(b"".join(lines))
            self._file.flush()
            self._written += len(lines)
            if self._written > 2 * self._keep:
                self._compact(kept)
        except OSError:
            pass  # the console's view is best effort; the audit sink already has the line

    def close(self) -> None:
        self._file.close()

    def _compact(self, kept: Iterable[bytes]) -> None:
        fresh = self._path.with_suffix(".tmp")
        lines = list(kept)
        fresh.write_bytes(b"".join(lines))
        os.replace(fresh, self._path)
        self._file.close()
        self._file = open(self._path, "ab")  # noqa: SIM115 - held open
        self._written = len(lines)


class RecentDecisions:
    """The last :data:`KEEP` audit lines of this process (and, under ``serve --workers``,
    of every worker), read as decision events."""

    def __init__(self, keep: int = KEEP, share_dir: str | None = None) -> None:
        self._lines: collections.deque[bytes] = collections.deque(maxlen=keep)
        self._keep = keep
        self._share = Path(share_dir) if share_dir else None
        self._own: _WorkerFile | None = None

    @classmethod
    def tap(cls, audit: AuditLog, keep: int = KEEP) -> RecentDecisions:
        """Keep what ``audit`` writes from now on (its sink is wrapped, not replaced);
        shared with the other workers when the serving parent named a directory."""
        recent = cls(keep, os.environ.get(SHARE_ENV))
        audit.sink = _Tee(audit.sink, recent)
        return recent

    def keep(self, lines: Sequence[bytes]) -> None:
        self._lines.extend(lines)
        if self._share is not None:
            if self._own is None:
                self._own = _WorkerFile(self._share, self._keep)
            self._own.append(lines, self._lines)

    def close(self) -> None:
        """Close this worker's file (its lines stay for the others until serve ends)."""
        if self._own is not None:
            self._own.close()
            self._own = None

    def _all_lines(self) -> list[bytes]:
        if self._share is None:
            return list(self._lines)
        lines = list(self._lines)
        mine = f"{_PREFIX}{os.getpid()}.jsonl"
        try:
            others = [p for p in self._share.glob(f"{_PREFIX}*.jsonl") if p.name != mine]
        except OSError:
            others = []
        for path in others:
            try:
                lines += path.read_bytes().splitlines()[-self._keep :]
            except OSError:
                continue  # a worker compacting or gone: its lines come next time
        return lines

    def events(self, account: str) -> list[dict[str, Any]]:
        """Decision events of ``account``'s principals, newest first."""
        found: list[dict[str, Any]] = []
        for line in self._all_lines():
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
        # RFC 3339 UTC timestamps of one format sort as text; stable for equal times.
        found.reverse()
        found.sort(key=lambda e: str(e.get("ts", "")), reverse=True)
        return found
