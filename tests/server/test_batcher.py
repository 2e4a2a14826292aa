"""The token-budget batcher: batch selection properties and queue behaviour, with no model and no torch."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_server.batcher import (
    PAD_TOLERANCE,
    SMALL_BATCH_TOKENS,
    BatchLimits,
    BatchStats,
    TokenBudgetBatcher,
    select_batch,
    select_packed,
)
from model_server.errors import BackendFailure, DeadlineExceeded, NotReady, Overloaded


@given(
    costs=st.lists(st.integers(min_value=1, max_value=512), min_size=1, max_size=200),
    max_items=st.integers(min_value=1, max_value=64),
    extra_budget=st.integers(min_value=0, max_value=20_000),
)
def test_selected_batch_respects_every_bound(costs: list[int], max_items: int, extra_budget: int) -> None:
    max_tokens = max(costs) + extra_budget  # one input always fits (the server enforces this at start-up)
    chosen = select_batch(costs, max_tokens, max_items)
    assert 0 in chosen, "the oldest input is always served first"
    assert len(set(chosen)) == len(chosen)
    assert 1 <= len(chosen) <= max_items
    padded = max(costs[i] for i in chosen) * len(chosen)
    real = sum(costs[i] for i in chosen)
    assert padded <= max_tokens
    if len(chosen) > 1:
        assert padded <= SMALL_BATCH_TOKENS or padded <= real * (1 + PAD_TOLERANCE)


def test_similar_lengths_are_batched_and_outliers_left_for_later() -> None:
    costs = [200, 10, 12, 198, 11, 205]
    chosen = select_batch(costs, 16_384, 64)
    assert sorted(costs[i] for i in chosen) == [198, 200, 205]


def test_budget_caps_the_batch() -> None:
    assert len(select_batch([100] * 50, 1000, 64)) == 10
    assert len(select_batch([100] * 50, 100_000, 7)) == 7


class Recorder:
    """A stand-in model that records the batches it is given."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay
        self.fail = fail
        self.gate: asyncio.Event | None = None

    async def __call__(self, payloads: list[str]) -> list[str]:
        self.batches.append(list(payloads))
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        return [p.upper() for p in payloads]


def limits(**overrides: float) -> BatchLimits:
    base = {"max_batch_tokens": 1000, "max_batch_requests": 8, "max_delay_s": 0.0, "max_queued_tokens": 10_000}
    base.update(overrides)
    return BatchLimits(**base)  # type: ignore[arg-type]


async def test_every_admitted_input_gets_its_own_result() -> None:
    model = Recorder()
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(model, limits())
    batcher.start()
    computed = batcher.submit([(10, f"x{i}") for i in range(20)], None)
    assert await computed == [f"X{i}" for i in range(20)]
    assert all(len(b) <= 8 for b in model.batches)
    await batcher.close()


async def test_queue_bound_refuses_whole_requests_without_queueing_any_part() -> None:
    model = Recorder()
    model.gate = asyncio.Event()
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(model, limits(max_queued_tokens=100))
    batcher.start()
    first = batcher.submit([(60, "a")], None)
    await asyncio.sleep(0)  # "a" moves into the (blocked) model: the queue is empty again
    second = batcher.submit([(60, "b"), (30, "c")], None)
    with pytest.raises(Overloaded, match="max_queued_tokens=100"):
        batcher.submit([(5, "d"), (6, "e")], None)
    assert batcher.queued_tokens == 90
    model.gate.set()
    assert list(await asyncio.gather(first, second)) == [["A"], ["B", "C"]]
    assert all("d" not in b and "e" not in b for b in model.batches)
    await batcher.close()


async def test_expired_inputs_are_never_computed() -> None:
    now = [100.0]
    model = Recorder()
    model.gate = asyncio.Event()
    expired: list[int] = []
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(
        model, limits(max_batch_requests=1), on_expired=expired.append, clock=lambda: now[0]
    )
    batcher.start()
    busy = batcher.submit([(10, "busy")], None)
    await asyncio.sleep(0)
    late = batcher.submit([(10, "late")], deadline=100.5)
    on_time = batcher.submit([(10, "on-time")], deadline=200.0)
    now[0] = 101.0  # the deadline of "late" passes while "busy" computes
    model.gate.set()
    assert list(await asyncio.gather(busy, on_time)) == [["BUSY"], ["ON-TIME"]]
    with pytest.raises(DeadlineExceeded, match="not computed"):
        await late
    assert ["late"] not in model.batches and all("late" not in b for b in model.batches)
    assert expired == [1]
    await batcher.close()


async def test_cancelled_inputs_are_dropped_and_release_their_tokens() -> None:
    model = Recorder()
    model.gate = asyncio.Event()
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(model, limits(max_batch_requests=1))
    batcher.start()
    busy = batcher.submit([(10, "busy")], None)
    await asyncio.sleep(0)
    gone = batcher.submit([(40, "gone")], None)
    assert batcher.queued_tokens == 40
    gone.cancel()
    await asyncio.sleep(0)
    assert batcher.queued_tokens == 0
    model.gate.set()
    await busy
    await batcher.close()
    assert all("gone" not in b for b in model.batches)


async def test_waits_for_company_at_most_the_delay() -> None:
    model = Recorder()
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(model, limits(max_delay_s=0.05))
    batcher.start()
    first = batcher.submit([(10, "a")], None)
    await asyncio.sleep(0.01)
    second = batcher.submit([(10, "b")], None)
    await asyncio.gather(first, second)
    assert model.batches == [["a", "b"]]
    await batcher.close()


async def test_a_failing_batch_fails_its_inputs_and_the_loop_goes_on() -> None:
    model = Recorder(fail=True)
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(model, limits())
    batcher.start()
    with pytest.raises(BackendFailure, match="model failed"):
        await batcher.submit([(10, "a")], None)
    model.fail = False
    assert await batcher.submit([(10, "b")], None) == ["B"]
    await batcher.close()


@pytest.mark.parametrize("concurrency", [1, 2, 3])
async def test_up_to_concurrency_batches_compute_at_once(concurrency: int) -> None:
    model = Recorder()
    model.gate = asyncio.Event()
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(
        model, limits(max_batch_requests=1), concurrency=concurrency
    )
    batcher.start()
    computed = batcher.submit([(10, p) for p in "abcde"], None)
    for _ in range(10):
        await asyncio.sleep(0)
    assert model.batches == [[p] for p in "abcde"[:concurrency]]  # the rest wait for a free slot
    assert batcher.queued_inputs == 5 - concurrency
    model.gate.set()
    assert await computed == list("ABCDE")
    await batcher.close()


async def test_a_request_fails_with_its_first_failing_input_and_its_queued_rest_is_dropped() -> None:
    class FailsOnBad(Recorder):
        async def __call__(self, payloads: list[str]) -> list[str]:
            self.batches.append(list(payloads))
            if "bad" in payloads:
                raise RuntimeError("model exploded")
            return [p.upper() for p in payloads]

    model = FailsOnBad()
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(model, limits(max_batch_requests=1))
    batcher.start()
    other = batcher.submit([(10, "x"), (10, "y")], None)
    doomed = batcher.submit([(10, "a"), (10, "bad"), (10, "c"), (10, "d")], None)
    with pytest.raises(BackendFailure, match="model failed"):
        await doomed
    assert await other == ["X", "Y"]
    await asyncio.sleep(0)
    # What was still queued of the failed request is never computed, and its tokens are free again.
    assert batcher.queued_tokens == 0 and batcher.queued_inputs == 0
    assert [p for b in model.batches for p in b if p in "cd"] == []
    assert await batcher.submit([], None) == []  # nothing to compute: answered at once
    await batcher.close()


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_close_finishes_admitted_inputs_then_refuses_new_ones(concurrency: int) -> None:
    model = Recorder(delay=0.01)
    stats: list[BatchStats] = []
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(
        model, limits(max_batch_requests=2), on_batch=stats.append, concurrency=concurrency
    )
    batcher.start()
    computed = batcher.submit([(10, str(i)) for i in range(6)], None)
    await batcher.close()
    assert computed.done() and computed.result() == [str(i) for i in range(6)]
    assert sum(s.inputs for s in stats) == 6
    with pytest.raises(NotReady):
        batcher.submit([(10, "late")], None)


async def test_submit_when_room_waits_instead_of_refusing() -> None:
    model = Recorder()
    model.gate = asyncio.Event()
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(
        model, limits(max_queued_tokens=50, max_batch_requests=1)
    )
    batcher.start()
    busy = batcher.submit([(10, "busy")], None)
    await asyncio.sleep(0)
    queued = batcher.submit([(40, "queued")], None)
    waiting = asyncio.create_task(batcher.submit_when_room([(40, "waits")], None))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    model.gate.set()
    later = await waiting
    assert list(await asyncio.gather(busy, queued, later)) == [["BUSY"], ["QUEUED"], ["WAITS"]]
    await batcher.close()


async def test_submit_when_room_gives_up_at_the_deadline() -> None:
    model = Recorder()
    model.gate = asyncio.Event()
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(
        model, limits(max_queued_tokens=50, max_batch_requests=1)
    )
    batcher.start()
    busy = batcher.submit([(10, "busy")], None)
    await asyncio.sleep(0)
    batcher.submit([(45, "queued")], None)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit_when_room([(40, "never")], time.monotonic() + 0.05)
    model.gate.set()
    await busy
    await batcher.close()


@given(
    costs=st.lists(st.integers(min_value=1, max_value=512), min_size=1, max_size=200),
    max_items=st.integers(min_value=1, max_value=64),
    extra_budget=st.integers(min_value=0, max_value=20_000),
)
def test_packed_batches_are_fifo_within_the_real_token_budget(
    costs: list[int], max_items: int, extra_budget: int
) -> None:
    max_tokens = max(costs) + extra_budget
    chosen = select_packed(costs, max_tokens, max_items)
    assert chosen[0] == 0 and chosen == sorted(chosen)
    assert len(chosen) <= max_items and sum(costs[i] for i in chosen) <= max_tokens
    skipped = [i for i in range(chosen[-1]) if i not in chosen]
    total = sum(costs[i] for i in chosen)
    # Nothing older was skipped that would still have fitted.
    assert all(total + costs[i] > max_tokens for i in skipped) or len(chosen) == max_items


async def test_a_packed_batcher_mixes_lengths_in_arrival_order() -> None:
    model = Recorder()
    model.gate = asyncio.Event()
    batcher: TokenBudgetBatcher[str, str] = TokenBudgetBatcher(model, limits(max_batch_tokens=300), padded=False)
    batcher.start()
    busy = batcher.submit([(10, "busy")], None)
    await asyncio.sleep(0)
    rest = batcher.submit([(200, "long"), (10, "short"), (150, "medium"), (20, "tiny")], None)
    model.gate.set()
    await asyncio.gather(busy, rest)
    assert model.batches[1] == ["long", "short", "tiny"]  # medium did not fit beside long: next batch
    assert model.batches[2] == ["medium"]
    await batcher.close()
