"""The sweep's plan (pure): which load points a run visits and in which order the systems take their turn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_LOAD_FRACTIONS = (0.5, 0.9)


def rotation(items: Sequence[T], round_index: int) -> list[T]:
    """`items` rotated by the round: each system goes first in turn, so no one always runs on a cold machine."""
    if not items:
        return []
    k = round_index % len(items)
    return list(items[k:]) + list(items[:k])
