"""A bounded map in two plain dicts: the gateway's caches' one eviction scheme.

Why not ``cachetools``: its LRU and TTL caches keep, besides the data dict, a size
dict and an ordered link per entry; measured with tracemalloc that is ~200 bytes per
entry on top of the entry itself, the biggest single cost of a cached token. Two
generations cost one dict slot per entry and O(1) per operation, and a hot entry
still survives a stream of new ones.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Generations"]

_K = TypeVar("_K")
_V = TypeVar("_V")


class Generations(Generic[_K, _V]):
    """``key -> value``, at most ``limit`` entries (at least 2), whatever the traffic.

    New entries go to ``young``; when it holds ``limit // 2`` it becomes ``old`` and
    the previous ``old`` is dropped. An entry found in ``old`` moves to ``young``, so
    an entry in use is never evicted by a stream of new ones. Values are never None
    (None from :meth:`get` means "not here"). Not thread-safe: the event loop's only.
    """

    __slots__ = ("_half", "old", "young")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a cache bound must be at least 1, got {limit}")
        self._half = max(1, limit // 2)
        self.young: dict[_K, _V] = {}
        self.old: dict[_K, _V] = {}

    @property
    def limit(self) -> int:
        """The most entries held at once."""
        return 2 * self._half

    def get(self, key: _K) -> _V | None:
        """The value, or None; a value found in the older generation moves to the
        younger one."""
        value = self.young.get(key)
        if value is None:
            value = self.old.pop(key, None)
            if value is not None:
                self.put(key, value)
        return value

    def peek(self, key: _K) -> _V | None:
        """The value, or None, without moving it."""
        value = self.young.get(key)
        return self.old.get(key) if value is None else value

    def put(self, key: _K, value: _V) -> None:
        """Hold ``value`` for ``key`` (replacing any older one)."""
        young = self.young
        if key not in young:
            if len(young) >= self._half:
                self.rotate()
                young = self.young
            self.old.pop(key, None)
        young[key] = value

    def rotate(self) -> None:
        """Drop the older generation; the younger one becomes it."""
        self.old = self.young
        self.young = {}

    def pop(self, key: _K) -> None:
        """Forget ``key`` (in both generations)."""
        self.young.pop(key, None)
        self.old.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self.young = {}
        self.old = {}

    def __len__(self) -> int:
        return len(self.young) + len(self.old)
