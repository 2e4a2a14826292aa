"""Token-count buckets and the packed batch layout the CUDA engine runs on: pure functions over plain numbers.

A batch of sequences is packed into one row per token and padded up to the smallest bucket that holds it, so
the encoder only ever sees a few shapes (one CUDA graph each). The layout is one int32 vector, so one host-to-
device copy carries it: token ids, positions, token types (a cross-encoder's pair segments; 0 elsewhere), and
the cumulative sequence offsets (`cu_seqlens`) that variable-length attention reads. Padding tokens belong to
no sequence: the offsets stop at the real token count and the unused sequence slots repeat it (zero-length
sequences), so attention never reads or writes pad rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import numpy.typing as npt

# Buckets grow by 2^(1/4) (four per doubling), rounded up to ALIGN: a batch pads by at most ~19 % (less the
# bigger it is, relatively), and a 64..16384 range is ~33 graphs, captured in seconds at start.
STEPS_PER_DOUBLING = 4
ALIGN = 64  # tensor-core friendly row counts
SMALLEST = 64
# Sequence slots per bucket: at most one per two tokens (every BERT input has [CLS] and [SEP]), capped: each
# slot is a (cheap, empty) thread block row in the attention kernel's grid.
MAX_SLOTS = 512

Int32Array = npt.NDArray[np.int32]


def token_buckets(largest: int, smallest: int = SMALLEST) -> tuple[int, ...]:
    """The bucket sizes, ascending, from `smallest` up to and including `largest` (rounded up to ALIGN)."""
    if largest < 1:
        raise ValueError(f"largest bucket {largest} must be positive")
    top = _align(largest)
    sizes = {min(_align(smallest), top), top}
    size = float(smallest)
    while size < top:
        sizes.add(min(_align(round(size)), top))
        size *= 2 ** (1 / STEPS_PER_DOUBLING)
    return tuple(sorted(sizes))


def _align(tokens: int) -> int:
    return -(-tokens // ALIGN) * ALIGN


def sequence_slots(bucket: int) -> int:
    """How many sequences a bucket's layout has room for."""
    return min(max(bucket // 2, 1), MAX_SLOTS)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the parts sit in a bucket's int32 vector: ids [tokens], positions [tokens], token types [tokens],
    offsets [slots + 1]."""

    tokens: int
    slots: int

    @property
    def size(self) -> int:
        """Length of the whole vector."""
        return 3 * self.tokens + self.slots + 1

    @property
    def positions(self) -> slice:
        """The positions' part."""
        return slice(self.tokens, 2 * self.tokens)

    @property
    def types(self) -> slice:
        """The token types' part."""
        return slice(2 * self.tokens, 3 * self.tokens)

    @property
    def offsets(self) -> slice:
        """The cumulative sequence offsets' part (int32, as variable-length attention takes them)."""
        return slice(3 * self.tokens, self.size)


def fits(lengths: Sequence[int], layout: Layout) -> bool:
    """Whether sequences of these lengths fit the layout."""
    return sum(lengths) <= layout.tokens and len(lengths) <= layout.slots


def layout_for(lengths: Sequence[int], buckets: Sequence[int]) -> Layout:
    """The smallest bucket's layout that holds sequences of these lengths (tokens and slots); an exact layout
    (no padding, no bucket) when none does."""
    layouts = (Layout(bucket, sequence_slots(bucket)) for bucket in buckets if bucket >= sum(lengths))
    return next((layout for layout in layouts if fits(lengths, layout)), Layout(sum(lengths), len(lengths)))


def fill(
    out: Int32Array,
    ids: Sequence[Sequence[int]],
    layout: Layout,
    pad_id: int,
    types: Sequence[Sequence[int] | None] | None = None,
) -> None:
    """Writes the batch's layout into `out` (a [layout.size] view, e.g. of pinned host memory); `types` holds
    each sequence's token types (None, or a None entry: type 0 throughout)."""
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    real = int(lengths.sum())
    if real > layout.tokens or len(ids) > layout.slots:
        raise ValueError(f"{len(ids)} sequences of {real} tokens do not fit {layout}")
    # chain.from_iterable iterates in C: 1.7x faster than a generator expression (16 k tokens: 217 vs 371 us).
    out[:real] = np.fromiter(chain.from_iterable(ids), np.int32, real)
    out[real : layout.tokens] = pad_id
    offsets = out[layout.offsets]
    offsets[0] = 0
    np.cumsum(lengths, dtype=np.int32, out=offsets[1 : len(ids) + 1])
    offsets[len(ids) + 1 :] = real
    positions = out[layout.positions]
    # Position of a token = its row minus its sequence's first row; pad rows get position 0.
    starts = np.repeat(offsets[: len(ids)], lengths)
    positions[:real] = np.arange(real, dtype=np.int32) - starts
    positions[real:] = 0
    typed = out[layout.types]
    typed[:] = 0
    if types is not None:
        for start, seq_types in zip(offsets[: len(ids)].tolist(), types, strict=True):
            if seq_types is not None:
                typed[start : start + len(seq_types)] = seq_types
