"""Event-loop CPU per request in the batcher alone (submit, batch, answer), with a model that answers at once.

  python bench/batcher_loop.py [--src DIR] [--texts 4,64] [--requests 3200]

`--src` puts another checkout's model_server first on the path, so two commits compare on the same machine:
run it once per checkout, interleaved (`git worktree add /tmp/base <commit>`). Both the API of one future per
input (before 2026-12-06) and that of one future per request are driven the way the data plane drives them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any


async def measure(texts: int, requests: int) -> float:
    """Process CPU seconds per request of `texts` inputs, 16 requests in flight."""
    from model_server.batcher import BatchLimits, TokenBudgetBatcher

    async def run(payloads: list[int]) -> list[int]:
        return payloads

    batcher: TokenBudgetBatcher[int, int] = TokenBudgetBatcher(
        run, BatchLimits(16_384, 100_000, 0.0, 10**9), padded=False
    )
    batcher.start()
    items = [(30, i) for i in range(texts)]

    async def one() -> Any:
        got: Any = batcher.submit(items, None)
        if isinstance(got, list):  # one future per input
            try:
                return await asyncio.gather(*got)
            finally:
                for future in got:
                    future.cancel()
        try:
            return await got
        finally:
            got.cancel()

    for _ in range(max(1, requests // 32)):  # warm-up
        await asyncio.gather(*[one() for _ in range(16)])
    started = time.process_time()
    for _ in range(max(1, requests // 16)):
        await asyncio.gather(*[one() for _ in range(16)])
    seconds = time.process_time() - started
    await batcher.close()
    return seconds / (max(1, requests // 16) * 16)


def main(argv: list[str] | None = None) -> None:
    """Prints microseconds per request and per text for each request size."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default="", help="a checkout whose model_server to measure (default: this one)")
    p.add_argument("--texts", default="4,64", help="texts per request, comma-separated")
    p.add_argument("--requests", type=int, default=3200)
    a = p.parse_args(argv)
    if a.src:
        sys.path.insert(0, a.src)
    for texts in (int(t) for t in a.texts.split(",")):
        per_request = asyncio.run(measure(texts, a.requests))
        per_text = 1e6 * per_request / texts
        print(f"{a.src or '.'}: {texts} texts: {1e6 * per_request:.1f} us per request, {per_text:.2f} us/text")


if __name__ == "__main__":
    main()
