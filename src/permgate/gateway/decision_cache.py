"""The gateway's decision cache, around the evaluation's permission step."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from cachetools import TTLCache

from permgate.gateway.evaluate import MemoKey, Verdict
from permgate.gateway.modelcache import ModelCache

__all__ = ["DecisionCache"]


@dataclass(frozen=True, slots=True)
class _Cached:
    """A verdict with the epochs (model, map) it was made at."""

    epochs: tuple[int, int]
    verdict: Verdict


class DecisionCache:
    """The gateway's decision cache, around the evaluation's permission step.

    A verdict is served only while the model's and the map's epochs are those it was
    made at, and stored only if neither moved while its inputs were read (the
    snapshot is taken before authentication). The TTL is a safety net only.
    """

    def __init__(self, model: ModelCache, *, ttl_seconds: float, max_entries: int) -> None:
        self._model = model
        self.map_epoch = 0
        self._entries: TTLCache[MemoKey, _Cached] = TTLCache(maxsize=max_entries, ttl=ttl_seconds)

    def snapshot(self) -> tuple[int, int]:
        """The epochs now: (model, map)."""
        return (self._model.epoch, self.map_epoch)

    def get(self, key: MemoKey, snapshot: Hashable) -> Verdict | None:
        """The cached verdict, if made at ``snapshot`` and nothing changed since."""
        cached = self._entries.get(key)
        if cached is not None and snapshot == cached.epochs == (self._model.epoch, self.map_epoch):
            return cached.verdict
        return None

    def put(self, key: MemoKey, snapshot: Hashable, verdict: Verdict) -> None:
        """Remember ``verdict`` unless the model or the map moved since ``snapshot``."""
        current = self.snapshot()
        if snapshot == current:
            self._entries[key] = _Cached(current, verdict)

    def new_map(self) -> None:
        """A new map: every cached verdict is stale at once."""
        self.map_epoch += 1
        self._entries.clear()
