"""Size-bounded LRU of per-input results, keyed on model revision, task, options and text."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Identity of one input's result: the same text under other options or weights is another entry."""

    revision: str
    task: str
    options: Hashable
    text: Hashable  # the text, or its token ids


class ResultCache(Generic[V]):
    """An LRU mapping CacheKey to results; capacity 0 turns it off. Not thread-safe: event loop only."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[CacheKey, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        """Whether results are kept at all."""
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> V | None:
        """The cached result, refreshed as most recently used, or None (counted as a miss)."""
        if not self.enabled:
            return None
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: CacheKey, value: V) -> None:
        """Stores a result, evicting the least recently used beyond capacity."""
        if not self.enabled:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
