"""Batch planning (pure), shared by the in-process ceiling and the Triton model callable.

Both use bertmesh's own batch selection (model_server.batcher.select_batch: the oldest input plus its
neighbours in length, within a padded-token budget, an input cap and a padding tolerance), applied until
nothing is left. The ceiling thus differs from bertmesh by the serving path only, not by the batching policy.
"""

from __future__ import annotations

from collections.abc import Sequence

from model_server.batcher import select_batch


def plan_batches(lengths: Sequence[int], max_tokens: int, max_items: int) -> list[list[int]]:
    """Index lists into `lengths` covering every input once, each batch chosen as bertmesh chooses it."""
    if max_tokens <= 0 or max_items <= 0:
        raise ValueError("max_tokens and max_items must be positive")
    remaining = list(range(len(lengths)))
    batches: list[list[int]] = []
    while remaining:
        chosen = select_batch([lengths[i] for i in remaining], max_tokens, max_items)
        batches.append([remaining[k] for k in chosen])
        taken = set(chosen)
        remaining = [i for k, i in enumerate(remaining) if k not in taken]
    return batches


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Tokens computed including padding: per batch, inputs x longest."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
