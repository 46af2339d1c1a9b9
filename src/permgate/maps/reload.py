"""Endpoint map hot reload: poll the file, validate whole, swap.

The file is watched by polling ``os.stat`` (which follows symlinks) together with
the fully resolved path. A Kubernetes ConfigMap update swaps the ``..data`` symlink
atomically, so the name keeps resolving to a *different* file: the real path and
the inode change even when size and mtime happen to match. Polling needs no
inotify, works on every filesystem, and costs one ``stat`` per interval.

A new map is parsed and validated as a whole in a thread (a large map takes tens of
milliseconds); only a valid map is handed to ``on_new_map``, which swaps it in
atomically and invalidates decision caches. A map with errors is never applied:
the old one keeps serving, and every ``FILE:LINE: message`` is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from permgate.core.endpoints import Endpoint, EndpointMap
from permgate.core.errors import MapError
from permgate.maps.loader import load_map

if TYPE_CHECKING:
    from permgate.observability.audit import AuditLog
    from permgate.observability.metrics import Metrics

__all__ = ["FileSignature", "MapReloader", "diff_maps", "file_signature"]

log = logging.getLogger("permgate.reload")

FileSignature = tuple[str, int, int, int, int] | tuple[str, str]
"""(real path, st_ino, st_dev, st_mtime_ns, st_size), or ("missing", why)."""

_COMPARED: Final = ("methods", "path", "permissions", "any_of", "public", "tenant")


def file_signature(path: str) -> FileSignature:
    """What identifies the file's current content without reading it."""
    try:
        real = os.path.realpath(path)
        st = os.stat(path)
    except OSError as exc:
        return ("missing", exc.strerror or str(exc))
    return (real, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


def _same(a: Endpoint, b: Endpoint) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in _COMPARED)


def diff_maps(old: EndpointMap | None, new: EndpointMap) -> dict[str, list[str]]:
    """Endpoint ids added, removed, and changed (method, path, permissions, any_of,
    public or tenant source; a moved line is not a change)."""
    before = {} if old is None else {e.id: e for e in old.endpoints}
    after = {e.id: e for e in new.endpoints}
    return {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": sorted(
            i for i in after.keys() & before.keys() if not _same(before[i], after[i])
        ),
    }


class MapReloader:
    """Keeps the served endpoint map in step with its file.

    Args:
        path: the map file (a symlink is followed on every poll).
        on_new_map: called with each valid new map; must swap it in atomically.
        metrics: counts ``permgate_endpoint_map_reloads_total`` and updates the info.
        audit: receives one ``map.reload`` event per attempt (ok or error).
        poll_seconds: how often the file is checked.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        on_new_map: Callable[[EndpointMap], None],
        metrics: Metrics,
        audit: AuditLog,
        poll_seconds: float = 1.0,
    ) -> None:
        self.path = os.fspath(path)
        self._on_new_map = on_new_map
        self._metrics = metrics
        self._audit = audit
        self.poll_seconds = poll_seconds
        self.current: EndpointMap | None = None
        self._signature: FileSignature | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def load_initial(self) -> EndpointMap:
        """Load the map at startup: it counts as a reload (``ok``), or raises MapError
        (counted as ``error``) so that serve refuses to start with a bad map."""
        signature = file_signature(self.path)
        try:
            endpoint_map = load_map(self.path)
        except MapError:
            self._metrics.map_failed()
            raise
        self._apply(endpoint_map, signature, "initial")
        return endpoint_map

    async def start(self) -> None:
        """Start polling (call :meth:`load_initial` first)."""
        self._task = asyncio.create_task(self._poll(), name="permgate-map-reloader")

    async def close(self) -> None:
        """Stop polling; a reload in progress finishes first."""
        if self._task is not None:
            async with self._lock:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload_now(self, reason: str = "signal") -> bool:
        """Reload even if the file looks unchanged (SIGHUP); True if a map was applied."""
        async with self._lock:
            return await self._reload(file_signature(self.path), reason)

    async def check(self) -> bool:
        """Reload if the file changed since the last attempt; True if a map was applied."""
        async with self._lock:
            signature = file_signature(self.path)
            if signature == self._signature:
                return False
            return await self._reload(signature, "file_changed")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.check()
            except Exception:  # the watcher must outlive any surprise
                log.exception("endpoint map watcher: unexpected error")

    async def _reload(self, signature: FileSignature, reason: str) -> bool:
        # The signature is taken before reading: a write during the read is seen next poll.
        self._signature = signature
        try:
            endpoint_map = await asyncio.to_thread(load_map, self.path)
        except MapError as exc:
            self._failed(exc.errors, reason)
            return False
        current = self.current
        unchanged = current is not None and current.sha256 == endpoint_map.sha256
        if unchanged and reason == "file_changed":
            log.debug("endpoint map %s touched but unchanged; not reloaded", self.path)
            return False
        try:
            self._apply(endpoint_map, signature, reason)
        except Exception as exc:
            log.exception("endpoint map %s: applying the new map failed", self.path)
            self._failed([f"{self.path}: applying the new map failed: {exc!r}"], reason)
            return False
        return True

    def _apply(self, endpoint_map: EndpointMap, signature: FileSignature, reason: str) -> None:
        old = self.current
        self._on_new_map(endpoint_map)
        self.current = endpoint_map
        self._signature = signature
        self._metrics.map_loaded(endpoint_map)
        changes = diff_maps(old, endpoint_map)
        log.info(
            "endpoint map %s loaded (%s): %d endpoints, sha256 %s; %d added, %d removed, "
            "%d changed",
            self.path,
            reason,
            len(endpoint_map.endpoints),
            endpoint_map.sha256,
            len(changes["added"]),
            len(changes["removed"]),
            len(changes["changed"]),
        )
        event: dict[str, Any] = {
            "event": "map.reload",
            "result": "ok",
            "reason": reason,
            "source": self.path,
            "endpoints": len(endpoint_map.endpoints),
            "old_sha256": None if old is None else old.sha256,
            "new_sha256": endpoint_map.sha256,
            "map_sha256": endpoint_map.sha256,
            **changes,
        }
        # Already applied, so it must not wait or fail: a rare event may exceed the bound.
        self._audit.emit_nowait(event)

    def _failed(self, errors: list[str], reason: str) -> None:
        self._metrics.map_failed()
        serving = self.current.sha256 if self.current is not None else None
        log.error(
            "endpoint map %s not applied (%d error(s)); still serving sha256 %s",
            self.path,
            len(errors),
            serving,
        )
        for line in errors:
            log.error("%s", line)
        self._audit.emit_nowait(
            {
                "event": "map.reload",
                "result": "error",
                "reason": reason,
                "source": self.path,
                "map_sha256": serving,
                "errors": list(errors),
            }
        )
