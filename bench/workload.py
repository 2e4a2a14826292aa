"""Load schedules (pure): concurrency sweeps, Poisson arrival times, request plans."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_LOAD_FRACTIONS = (0.5, 0.9)


def poisson_arrivals(rate: float, seconds: float, seed: int) -> list[float]:
    """Arrival offsets (seconds from the start) of a Poisson process of `rate` per second over `seconds`."""
    if rate <= 0:
        raise ValueError(f"rate {rate} must be positive")
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def open_loop_rates(capacity: float, fractions: Sequence[float] = DEFAULT_LOAD_FRACTIONS) -> list[float]:
    """Offered rates at the given fractions of a measured capacity (requests per second)."""
    return [capacity * f for f in fractions]


def rotation(items: Sequence[T], round_index: int) -> list[T]:
    """`items` rotated by the round: each system goes first in turn, so no one always runs on a cold machine."""
    if not items:
        return []
    k = round_index % len(items)
    return list(items[k:]) + list(items[:k])
