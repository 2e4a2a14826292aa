"""Load schedules (pure): when an open loop's requests arrive."""

from __future__ import annotations

import random


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
