"""The CUDA engine on a GPU: outputs against transformers at fp16/bf16 tolerance, graphs replayed for batches of
any composition with no capture or compilation after warm-up, and a bounded number of launches per batch."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from model_server.backend.cuda_engine import CudaEngine
from model_server.backend.factory import create_engine
from model_server.backend.transformers_engine import TransformersEngine
from model_server.checkpoint import inspect_checkpoint
from model_server.config import EngineConfig
from model_server.tasks import ModelInput
from tests.server import checkpoints
from tests.server.checkpoints import inputs_of_lengths

pytestmark = pytest.mark.gpu

TASKS = ("embedding", "sequence-classification", "token-classification", "fill-mask")
BUCKET_TOKENS = 1024
# Per batch outside the graph: the layout copy, the head's few kernels and copies. The graph holds the rest.
MAX_LAUNCHES = 40


def _random_batches(count: int, seed: int = 0) -> list[list[ModelInput]]:
    """Batches of distinct compositions: 1 to 10 inputs of 2 to 100 tokens (within the largest bucket)."""
    rng = random.Random(seed)
    batches = []
    for _ in range(count):
        lengths = [rng.randint(2, 100) for _ in range(rng.randint(1, 10))]
        batches.append(inputs_of_lengths(lengths))
    return batches


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu-models")
    return {task: checkpoints.build(root / task, task) for task in TASKS}


def _engine(path: Path, precision: str, **settings: Any) -> CudaEngine:
    config = EngineConfig(device="cuda", kind="cuda", precision=precision, bucket_tokens=BUCKET_TOKENS, **settings)
    engine = create_engine(inspect_checkpoint(path), config)
    assert isinstance(engine, CudaEngine)
    engine.warmup([2, *range(5, 100), 3])
    return engine


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("task", TASKS)
def test_outputs_equal_transformers_at_half_precision(
    cuda: torch.device, models: dict[str, Path], task: str, precision: str
) -> None:
    engine = _engine(models[task], precision)
    assert engine.encoder.attention.name in ("varlen", "flash-op") and engine.graphs
    reference = create_engine(inspect_checkpoint(models[task]), EngineConfig(device="cpu", kind="transformers"))
    assert isinstance(reference, TransformersEngine)
    tolerance = 2e-2 if precision == "fp16" else 6e-2
    for lengths in ([17], [32, 32], [32, 33], [2] * 40, [100] * 10, [120] * 9):  # the last: over all buckets
        batch = inputs_of_lengths(lengths)
        for ours, theirs in zip(engine.run(batch), reference.run(batch), strict=True):
            assert ours.shape == theirs.shape
            assert np.allclose(ours, theirs, atol=tolerance, rtol=tolerance), (task, precision, lengths)


def _pairs() -> list[ModelInput]:
    """Cross-encoder inputs: [CLS] query [SEP] document [SEP], the document's tokens of type 1."""
    return [
        ModelInput((2, *range(5, 5 + q), 3, *range(40, 40 + d), 3), type_ids=(0,) * (q + 2) + (1,) * (d + 1))
        for q, d in ((3, 10), (8, 50), (1, 90), (20, 20))
    ]


@pytest.mark.parametrize("type_vocab_size", [2, 1])
def test_cross_encoder_pairs_equal_transformers(cuda: torch.device, tmp_path: Path, type_vocab_size: int) -> None:
    # Typed pairs through the layout's type part; a model with one type row must get none (an index past its
    # embedding is a device-side assert that fails every later CUDA call of the process).
    path = checkpoints.build(tmp_path / "cross-encoder", "rerank", type_vocab_size=type_vocab_size)
    engine = _engine(path, "fp16")
    reference = create_engine(inspect_checkpoint(path), EngineConfig(device="cpu", kind="transformers"))
    for ours, theirs in zip(engine.run(_pairs()), reference.run(_pairs()), strict=True):
        assert np.allclose(ours, theirs, atol=2e-2, rtol=2e-2), (ours, theirs)


def test_graph_replay_equals_eager(cuda: torch.device, models: dict[str, Path]) -> None:
    graphed, eager = _engine(models["embedding"], "fp16"), _engine(models["embedding"], "fp16", cuda_graphs=False)
    assert graphed.graphs and not eager.graphs
    for batch in _random_batches(8):
        for a, b in zip(graphed.run(batch), eager.run(batch), strict=True):
            assert np.allclose(a, b, atol=1e-3)


def test_unseen_compositions_replay_graphs_without_new_capture_or_compilation(
    cuda: torch.device, models: dict[str, Path]
) -> None:
    engine = _engine(models["embedding"], "fp16")
    graphs = dict(engine.graphs)
    eager = engine.eager_batches
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for batch in _random_batches(64, seed=1):
        engine.run(batch)
    assert engine.graphs == graphs and engine.eager_batches == eager
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiled


def _launches(engine: CudaEngine, batch: list[ModelInput]) -> tuple[int, int, list[str]]:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.run(batch)
    names = [event.name for event in prof.events()]
    kernels = sum(1 for name in names if name.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
    graphs = sum(1 for name in names if name.startswith(("cudaGraphLaunch", "cuGraphLaunch")))
    return kernels, graphs, names


def test_launches_per_batch_are_bounded_whatever_the_composition(cuda: torch.device, models: dict[str, Path]) -> None:
    engine = _engine(models["embedding"], "fp16")
    counts = set()
    for batch in _random_batches(6, seed=2):
        kernels, graphs, names = _launches(engine, batch)
        assert graphs == 1 and kernels <= MAX_LAUNCHES, (kernels, graphs)
        assert not any("cudnn" in name.lower() for name in names)  # no per-shape cuDNN attention plans
        counts.add(kernels)
    assert len(counts) == 1  # the same launches for every composition


def test_batches_in_flight_together_equal_batches_run_alone(cuda: torch.device, models: dict[str, Path]) -> None:
    # Two threads: one batch's layout copy and graph are queued while the other's results are still being copied.
    engine = _engine(models["embedding"], "fp16", inflight_batches=2)
    assert engine.info.concurrent_batches == 2 and engine.graphs
    batches = _random_batches(48, seed=4)
    alone = [engine.run(batch) for batch in batches]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(engine.run, batches * 3))
    for a, b in zip(alone * 3, together, strict=True):  # not bitwise: the head's index_add_ sums by atomics
        assert all(np.allclose(x, y, atol=1e-3) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("task", TASKS)
def test_a_batch_waits_for_the_device_only_for_its_results(
    cuda: torch.device, models: dict[str, Path], task: str
) -> None:
    # Any synchronising copy or call before the head's copy to the host would stall the next batch's preparation.
    engine = _engine(models[task], "fp16")
    batch = [replace(item, positions=(1, 2), normalize=True) for item in inputs_of_lengths([17, 40, 5])]
    engine.run(batch)  # the pinned buffers of these sizes exist
    torch.cuda.set_sync_debug_mode("error")  # event waits are not counted: the copy back is one
    try:
        assert len(engine.run(batch)) == 3
    finally:
        torch.cuda.set_sync_debug_mode("default")
