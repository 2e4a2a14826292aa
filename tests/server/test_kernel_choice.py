"""CPU kernels chosen at load: the pure decision over timings (tables), forced flags, and the startup line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from model_server.backend.factory import create_engine
from model_server.backend.kernel_choice import BASELINE, Kernels, candidates, choose, relative
from model_server.backend.onednn import OneDnnLinear
from model_server.backend.packed_cpu import shapes
from model_server.backend.packed_engine import PackedEngine
from model_server.checkpoint import inspect_checkpoint
from model_server.config import EngineConfig

ONEDNN_NATIVE, ONEDNN_TORCH, TORCH_NATIVE = (
    Kernels("onednn", "native"),
    Kernels("onednn", "torch"),
    Kernels("torch", "native"),
)


def test_auto_offers_every_available_combination_with_the_baseline_first() -> None:
    offered = candidates("auto", "auto", onednn=True, native=True)
    assert offered[0] == BASELINE and set(offered) == {BASELINE, ONEDNN_NATIVE, ONEDNN_TORCH, TORCH_NATIVE}
    assert candidates("auto", "auto", onednn=False, native=True) == [BASELINE, TORCH_NATIVE]
    assert candidates("auto", "auto", onednn=True, native=False) == [BASELINE, ONEDNN_TORCH]


def test_forced_flags_leave_one_side_or_one_candidate() -> None:
    assert candidates("auto", "native", onednn=True, native=True) == [TORCH_NATIVE, ONEDNN_NATIVE]
    assert candidates("onednn", "torch", onednn=True, native=True) == [ONEDNN_TORCH]
    # Forced where it cannot run: PyTorch's (the engine logs why).
    assert candidates("onednn", "native", onednn=False, native=False) == [BASELINE]


@pytest.mark.parametrize(
    ("timings", "expected"),
    [
        # Clearly faster on every shape: chosen.
        ({BASELINE: [1.0, 10.0], TORCH_NATIVE: [0.5, 5.0]}, TORCH_NATIVE),
        # The AVX2 case of issue 18: the kernel several times slower: never enabled.
        ({BASELINE: [1.0, 10.0], TORCH_NATIVE: [3.0, 30.0], ONEDNN_TORCH: [0.9, 9.0]}, ONEDNN_TORCH),
        # Within the margin of the baseline: PyTorch's stays.
        ({BASELINE: [1.0, 10.0], ONEDNN_NATIVE: [0.98, 9.7]}, BASELINE),
        # The fastest of several.
        ({BASELINE: [1.0, 10.0], ONEDNN_TORCH: [0.8, 8.0], ONEDNN_NATIVE: [0.6, 7.0]}, ONEDNN_NATIVE),
        # Shapes count alike: a big win on the short batch outweighs a small loss on the long one.
        ({BASELINE: [1.0, 10.0], TORCH_NATIVE: [0.5, 10.5]}, TORCH_NATIVE),
        # One candidate only: itself.
        ({ONEDNN_TORCH: [2.0]}, ONEDNN_TORCH),
    ],
)
def test_choose_picks_the_fastest_that_beats_the_baseline(
    timings: dict[Kernels, list[float]], expected: Kernels
) -> None:
    assert choose(timings) == expected


def test_choose_refuses_what_it_cannot_compare() -> None:
    with pytest.raises(ValueError):
        choose({})
    with pytest.raises(ValueError):
        relative([1.0], [1.0, 2.0])


def test_timed_batches_follow_the_budget_and_the_model_positions() -> None:
    batches = shapes(2048, 512)
    assert [len(b) for b in list(batches.values())[:2]] == [1, 1]
    assert sum(list(batches.values())[2]) == 384  # capped: load stays quick
    assert sum(list(shapes(100, 512).values())[2]) == 100
    assert max(max(b) for b in shapes(2048, 40).values()) <= 40


def engine_kernels(engine: object) -> tuple[bool, bool]:
    """(oneDNN projections, packed attention kernel) as the engine's model runs them."""
    assert isinstance(engine, PackedEngine)
    layers = list(engine.model.encoder._typed_layers)
    return all(isinstance(layer.qkv, OneDnnLinear) for layer in layers), all(layer.native for layer in layers)


@pytest.mark.parametrize(
    ("projections", "attention"), [("torch", "torch"), ("torch", "native"), ("onednn", "torch"), ("onednn", "native")]
)
def test_forced_choices_are_honoured(head_dim_32: Path, projections: str, attention: str) -> None:
    settings = EngineConfig(device="cpu", projections=projections, attention=attention)
    engine = create_engine(inspect_checkpoint(head_dim_32), settings)
    assert engine_kernels(engine) == (projections == "onednn", attention == "native")
    assert engine.info.kernels.startswith(Kernels(projections, attention).describe())


def test_auto_times_the_candidates_and_the_startup_line_names_the_choice(
    head_dim_32: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="model_server.backend.packed_cpu"):
        engine = create_engine(inspect_checkpoint(head_dim_32), EngineConfig(device="cpu", batch_tokens=256))
    lines = [r.getMessage() for r in caplog.records if "packed engine kernels" in r.getMessage()]
    assert len(lines) == 1
    line = lines[0]
    assert "chosen by timing" in line and "1x16/1x128/256 tokens" in line
    for candidate in (BASELINE, TORCH_NATIVE, ONEDNN_TORCH, ONEDNN_NATIVE):
        assert candidate.describe() in line
    before = line.split(" <- chosen")[0].rsplit("; ", 1)[-1]
    chosen = next(c for c in (BASELINE, TORCH_NATIVE, ONEDNN_TORCH, ONEDNN_NATIVE) if c.describe() in before)
    assert engine.info.kernels.startswith(chosen.describe())
    assert engine_kernels(engine) == (chosen.projections == "onednn", chosen.attention == "native")
