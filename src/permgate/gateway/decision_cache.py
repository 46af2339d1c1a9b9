"""The gateway's decision cache, around the evaluation's permission step.

Memory (measured with tracemalloc, one entry per token used once): a ``TTLCache``
entry with its own ``_Cached``, epochs tuple, ``Verdict`` and ``Decision`` cost
~620 bytes. Here an entry is the key and a ``(expires, verdict)`` pair; the epochs
are the cache's (it is emptied when they move), and equal verdicts are one shared
object (most tokens of a route get the same verdict).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Final

from permgate.gateway.evaluate import MemoKey, Verdict
from permgate.gateway.generations import Generations
from permgate.gateway.modelcache import ModelCache

__all__ = ["DecisionCache"]

# Distinct verdicts shared between entries before the table starts again (a bound:
# a verdict names the endpoint, the tenant and what was missing).
_VERDICTS_MAX: Final = 4096


class DecisionCache:
    """The gateway's decision cache, around the evaluation's permission step.

    A verdict is served only while the model's and the map's epochs are those it was
    made at, and stored only if neither moved while its inputs were read (the
    snapshot is taken before authentication). The TTL is a safety net only.

    Bounded twice: at most ``max_entries`` (:class:`Generations`), and entries older
    than two TTLs are dropped whole (the younger generation is retired every TTL), so
    a stream of credentials used once holds about the last two TTLs' worth.
    """

    def __init__(
        self,
        model: ModelCache,
        *,
        ttl_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self.map_epoch = 0
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: Generations[MemoKey, tuple[float, Verdict]] = Generations(max_entries)
        self._verdicts: dict[Verdict, Verdict] = {}
        # The epochs every held entry was made at; entries of other epochs are dropped.
        self._epochs = self.snapshot()
        self._rotated = clock()

    def snapshot(self) -> tuple[int, int]:
        """The epochs now: (model, map)."""
        return (self._model.epoch, self.map_epoch)

    def get(self, key: MemoKey, snapshot: Hashable) -> Verdict | None:
        """The cached verdict, if made at ``snapshot`` and nothing changed since."""
        epochs = self._epochs
        if snapshot != epochs or epochs[0] != self._model.epoch or epochs[1] != self.map_epoch:
            return None
        entries = self._entries
        cached = entries.get(key)
        if cached is None:
            return None
        if cached[0] <= self._clock():
            return None
        return cached[1]

    def put(self, key: MemoKey, snapshot: Hashable, verdict: Verdict) -> None:
        """Remember ``verdict`` unless the model or the map moved since ``snapshot``."""
        current = self.snapshot()
        if snapshot != current:
            return
        now = self._clock()
        if current != self._epochs:
            self._entries.clear()  # made at older epochs: none could be served again
            self._epochs = current
        elif now - self._rotated >= self._ttl:
            self._entries.rotate()  # the older generation is past its TTL by now
            self._rotated = now
        verdicts = self._verdicts
        shared = verdicts.get(verdict)
        if shared is None:
            if len(verdicts) >= _VERDICTS_MAX:
                verdicts.clear()
            shared = verdicts[verdict] = verdict
        self._entries.put(key, (now + self._ttl, shared))

    def new_map(self) -> None:
        """A new map: every cached verdict is stale at once."""
        self.map_epoch += 1
        self._entries.clear()
        self._verdicts.clear()

    def __len__(self) -> int:
        return len(self._entries)
