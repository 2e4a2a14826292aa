"""Token buckets and the packed layout the CUDA engine runs on: tables of cases, no model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_server.backend.buckets import MAX_SLOTS, Layout, fill, fits, layout_for, sequence_slots, token_buckets


@pytest.mark.parametrize(
    ("largest", "expected"),
    [
        (1, (64,)),
        (64, (64,)),
        (100, (64, 128)),
        (512, (64, 128, 192, 256, 320, 384, 448, 512)),
        (2048, (64, 128, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1472, 1728, 2048)),
    ],
)
def test_bucket_tables(largest: int, expected: tuple[int, ...]) -> None:
    assert token_buckets(largest) == expected


def test_cuda_default_buckets_are_few_and_pad_little() -> None:
    buckets = token_buckets(16_384)
    assert len(buckets) == 28 and buckets[-1] == 16_384
    assert all(size % 64 == 0 for size in buckets)
    # Past the smallest sizes, a batch one token over a bucket pads by under a fifth of the next one.
    assert all((b - a - 1) / b < 0.2 for a, b in itertools.pairwise(buckets) if a >= 1024)


@pytest.mark.parametrize(
    ("lengths", "layout"),
    [
        ([1], Layout(64, 32)),
        ([32, 32], Layout(64, 32)),  # exactly a bucket
        ([32, 33], Layout(128, 64)),  # one token over
        ([512], Layout(512, 256)),
        ([256, 257], Layout(640, 320)),
        ([1] * 40, Layout(128, 64)),  # 40 tokens, but more sequences than the 64 bucket's 32 slots
        ([1024, 1024], Layout(2048, MAX_SLOTS)),  # exactly the largest
        ([1024, 1025], Layout(2049, 2)),  # over the largest: exact, no bucket
        ([2] * 600, Layout(1200, 600)),  # more sequences than any bucket has slots
    ],
)
def test_a_batch_goes_to_the_smallest_bucket_that_holds_it(lengths: list[int], layout: Layout) -> None:
    assert layout_for(lengths, token_buckets(2048)) == layout


@pytest.mark.parametrize(("bucket", "slots"), [(64, 32), (1, 1), (1024, MAX_SLOTS), (16_384, MAX_SLOTS)])
def test_sequence_slots(bucket: int, slots: int) -> None:
    assert sequence_slots(bucket) == slots


def test_layout_of_two_sequences_in_a_bucket_of_eight() -> None:
    layout = Layout(tokens=8, slots=4)
    out = np.full(layout.size, -1, np.int32)
    fill(out, [[5, 6, 7], [8, 9]], layout, pad_id=0)
    assert out[:8].tolist() == [5, 6, 7, 8, 9, 0, 0, 0]  # ids, then padding
    assert out[layout.positions].tolist() == [0, 1, 2, 0, 1, 0, 0, 0]
    assert out[layout.offsets].tolist() == [0, 3, 5, 5, 5]  # unused slots: empty sequences at the end


def test_token_types_sit_at_their_sequences_rows_and_default_to_zero() -> None:
    layout = Layout(tokens=8, slots=4)
    out = np.full(layout.size, -1, np.int32)
    fill(out, [[5, 6, 7], [8, 9]], layout, pad_id=0, types=[None, [0, 1]])
    assert out[layout.types].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]  # the first sequence untyped; padding type 0
    fill(out, [[5, 6], [8]], layout, pad_id=0)
    assert out[layout.types].tolist() == [0] * 8  # no types: every row type 0, stale ones overwritten


def test_a_batch_exactly_filling_its_layout_has_no_padding() -> None:
    layout = Layout(tokens=4, slots=2)
    out = np.zeros(layout.size, np.int32)
    fill(out, [[1, 2], [3, 4]], layout, pad_id=9)
    assert out[:4].tolist() == [1, 2, 3, 4] and out[layout.offsets].tolist() == [0, 2, 4]


def test_too_big_a_batch_is_refused() -> None:
    layout = Layout(tokens=4, slots=2)
    assert not fits([3, 2], layout) and not fits([1, 1, 1], layout) and fits([2, 2], layout)
    with pytest.raises(ValueError, match="do not fit"):
        fill(np.zeros(layout.size, np.int32), [[1, 2, 3], [4, 5]], layout, pad_id=0)


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_layout_offsets_and_positions_describe_every_sequence(lengths: list[int]) -> None:
    layout = Layout(tokens=sum(lengths) + 7, slots=len(lengths) + 3)
    ids = [[100 * i + j for j in range(n)] for i, n in enumerate(lengths)]
    out = np.zeros(layout.size, np.int32)
    fill(out, ids, layout, pad_id=0)
    offsets = out[layout.offsets]
    for i, seq in enumerate(ids):
        assert out[offsets[i] : offsets[i + 1]].tolist() == seq
        assert out[layout.positions][offsets[i] : offsets[i + 1]].tolist() == list(range(len(seq)))
    assert (offsets[len(ids) :] == sum(lengths)).all()
