"""The CUDA engine's code path, run eagerly on the CPU: variable-length attention, bucket padding and the layer
loop against transformers for every task head, and the factory's choice of it."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import transformers
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from model_server.backend.buckets import Layout
from model_server.backend.cuda_engine import CudaEngine, CudaOutput
from model_server.backend.factory import create_engine, resolve_engine
from model_server.backend.transformers_engine import TransformersEngine
from model_server.backend.varlen import VarlenAttention, agrees_with_reference, choose, reference
from model_server.checkpoint import inspect_checkpoint
from model_server.config import EngineConfig, parse_args
from model_server.errors import ConfigError
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from model_server.tasks import Pooling
from tests.server.checkpoints import inputs_of_lengths
from tests.server.harness import ServerThread, config_for

# Buckets with bucket_tokens=256: 64, 128, 192, 256 (32 to 128 sequence slots).
EDGE_CASES = {
    "one sequence": [17],
    "exactly a bucket": [30, 34],
    "one token over a bucket": [30, 35],
    "exactly the largest bucket": [128, 128],
    "bigger than the largest bucket (exact layout)": [120, 120, 60],
    "more sequences than the first bucket's slots": [1] * 70,
    "many lengths": [3, 30, 7, 64, 2, 11],
}


@pytest.fixture(scope="module")
def engines(tiny_models: dict[str, Path]) -> dict[str, tuple[CudaEngine, TransformersEngine]]:
    """Per task: the cuda engine (small buckets, on CPU) and the transformers engine."""
    out = {}
    for task, path in tiny_models.items():
        checkpoint = inspect_checkpoint(path)
        cuda = create_engine(checkpoint, EngineConfig(device="cpu", kind="cuda", bucket_tokens=256))
        padded = create_engine(checkpoint, EngineConfig(device="cpu", kind="transformers"))
        assert isinstance(cuda, CudaEngine) and isinstance(padded, TransformersEngine)
        out[task] = (cuda, padded)
    return out


@pytest.mark.parametrize("case", list(EDGE_CASES))
@pytest.mark.parametrize(
    "task", ["embedding", "sequence-classification", "token-classification", "fill-mask", "rerank"]
)
def test_every_head_equals_transformers(engines: dict[str, tuple[Any, Any]], task: str, case: str) -> None:
    cuda, padded = engines[task]
    batch = inputs_of_lengths(EDGE_CASES[case])
    if task == "rerank":  # (query, document) pairs: the document's tokens are type 1, as a cross-encoder reads them
        batch = [
            replace(item, type_ids=tuple(int(j >= len(item.ids) // 2) for j in range(len(item.ids)))) for item in batch
        ]
    ours, theirs = cuda.run(batch), padded.run(batch)
    assert len(ours) == len(theirs) == len(batch)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-4), (task, case)


def test_bucket_padding_is_used_and_never_leaks(engines: dict[str, tuple[Any, Any]]) -> None:
    cuda, _ = engines["embedding"]
    assert cuda.buckets == (64, 128, 192, 256)
    assert cuda.layout_for([30, 35]).tokens == 128 and cuda.layout_for([30, 34]).tokens == 64
    assert cuda.layout_for([1] * 70) == Layout(192, 96)  # 70 sequences: over the 128 bucket's 64 slots
    assert cuda.layout_for([120, 120, 60]) == Layout(300, 3)  # over the largest bucket: exact, run eagerly
    alone = [cuda.run([item])[0] for item in inputs_of_lengths([5, 9])]
    together = cuda.run(inputs_of_lengths([5, 9]))  # same inputs padded into one bucket with each other
    for a, b in zip(alone, together, strict=True):
        assert np.allclose(a, b, atol=1e-5)


def test_embeddings_equal_transformers_directly(tiny_models: dict[str, Path]) -> None:
    path = tiny_models["embedding"]
    engine = create_engine(inspect_checkpoint(path), EngineConfig(device="cpu", kind="cuda", bucket_tokens=256))
    reference_model: Any = transformers.BertModel.from_pretrained(str(path))
    reference_model.train(False)
    batch = inputs_of_lengths([9, 40, 3])
    with torch.inference_mode():
        expected = [reference_model(input_ids=torch.tensor([item.ids])).last_hidden_state[0] for item in batch]
    for item, ours, states in zip(batch, engine.run(batch), expected, strict=True):
        want = states[0] if item.pooling is Pooling.CLS else states.mean(0)
        assert np.allclose(ours, want.numpy(), atol=1e-5)


def test_reference_attention_attends_within_each_sequence_only() -> None:
    torch.manual_seed(0)
    heads, dim, lengths = 2, 8, [3, 5, 1]
    tokens = sum(lengths) + 4  # four padding rows after the sequences
    q, k, v = (torch.randn(tokens, heads, dim) for _ in range(3))
    offsets = torch.tensor([0, 3, 8, 9, 9, 9], dtype=torch.int32)  # two empty slots
    out = reference(q, k, v, offsets, 64)
    for start, n in zip([0, 3, 8], lengths, strict=True):
        rows = slice(start, start + n)
        query, key, value = (x[rows].transpose(0, 1) for x in (q, k, v))
        expected = F.scaled_dot_product_attention(query, key, value).transpose(0, 1)
        assert torch.allclose(out[rows], expected, atol=1e-6)
    assert (out[9:] == 0).all()


def test_attention_is_chosen_by_device_precision_and_head_size() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert choose(cpu, torch.float32, 64).name == "reference"
    assert choose(cuda, torch.float32, 64).name == "reference"  # flash takes fp16/bf16 only
    assert choose(cuda, torch.float16, 12).name == "reference"  # nor head sizes off a multiple of 8
    first = choose(cuda, torch.bfloat16, 64)
    assert first.name == "varlen" and first.capturable  # torch.nn.attention.varlen exists in this torch
    assert choose(cuda, torch.float16, 32, prefer="flash-op").name == "flash-op"
    assert not choose(cpu, torch.float32, 64).capturable


def test_the_load_time_probe_refuses_an_attention_that_disagrees() -> None:
    cpu = torch.device("cpu")
    assert agrees_with_reference(VarlenAttention("reference", reference, False), cpu, torch.float32, 8)

    def unmasked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, _: int) -> torch.Tensor:
        return F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1)

    def failing(*_: object) -> torch.Tensor:
        raise RuntimeError("not on this build")

    assert not agrees_with_reference(VarlenAttention("unmasked", unmasked, True), cpu, torch.float32, 8)
    assert not agrees_with_reference(VarlenAttention("failing", failing, True), cpu, torch.float32, 8)


def test_the_factory_picks_the_cuda_engine_for_cuda_devices_only() -> None:
    bert, roberta = transformers.BertConfig(), transformers.RobertaConfig()
    assert resolve_engine("auto", bert, "cuda") == "cuda"
    assert resolve_engine("auto", bert, "cpu") == "packed"
    assert resolve_engine("auto", roberta, "cuda") == "transformers"
    assert resolve_engine("cuda", bert, "cpu") == "cuda"  # forced: it runs eagerly there


def test_cuda_engine_settings_parse() -> None:
    assert parse_args([], env={}).engine.cuda_graphs is True
    engine = parse_args(["--engine", "cuda", "--no-cuda-graphs", "--bucket-tokens", "4096"], env={}).engine
    assert engine == EngineConfig(kind="cuda", cuda_graphs=False, bucket_tokens=4096)


def test_on_cpu_every_batch_runs_eagerly(engines: dict[str, tuple[Any, Any]]) -> None:
    cuda, _ = engines["embedding"]
    before = cuda.eager_batches
    cuda.warmup([2, 5, 6, 3])
    cuda.run(inputs_of_lengths([4]))
    assert cuda.graphs == {} and cuda.eager_batches > before
    assert cuda.info.engine == "cuda" and cuda.info.packed


def _inflight_engine(path: Path) -> CudaEngine:
    settings = EngineConfig(device="cpu", kind="cuda", bucket_tokens=256, inflight_batches=2)
    engine = create_engine(inspect_checkpoint(path), settings)
    assert isinstance(engine, CudaEngine)
    return engine


def test_batches_in_flight_default_to_one_on_cpu_and_follow_the_setting(tiny_models: dict[str, Path]) -> None:
    checkpoint = inspect_checkpoint(tiny_models["embedding"])
    assert create_engine(checkpoint, EngineConfig(device="cpu", kind="cuda")).info.concurrent_batches == 1
    assert _inflight_engine(tiny_models["embedding"]).info.concurrent_batches == 2
    assert create_engine(checkpoint, EngineConfig(device="cpu", kind="packed")).info.concurrent_batches == 1
    with pytest.raises(ConfigError, match=r"--inflight-batches 2: only the cuda engine .* packed engine"):
        create_engine(checkpoint, EngineConfig(device="cpu", kind="packed", inflight_batches=2))
    assert parse_args(["--inflight-batches", "3"], env={}).engine.inflight_batches == 3
    assert parse_args([], env={}).engine.inflight_batches is None


def test_a_batch_hands_the_device_on_once_its_copy_to_the_host_is_queued(tiny_models: dict[str, Path]) -> None:
    engine = _inflight_engine(tiny_models["embedding"])
    first, second = inputs_of_lengths([7, 30]), inputs_of_lengths([12])
    expected = engine.run(first), engine.run(second)
    copied, go_on = threading.Event(), threading.Event()
    real_head = engine._head

    def held_head(out: Any, inputs: Any) -> Any:
        rows = real_head(out, inputs)  # its copy to the host is the last device operation
        if inputs is first:
            copied.set()
            assert go_on.wait(30)  # the first batch still running: its host-side work is not done
        return rows

    engine._head = held_head
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(engine.run, first)
        assert copied.wait(30)
        # With the device held for the whole batch, this would wait for `go_on` and time out.
        later = pool.submit(engine.run, second).result(timeout=30)
        go_on.set()
        for ours, want in zip([*running.result(timeout=30), *later], [*expected[0], *expected[1]], strict=True):
            assert np.array_equal(ours, want)


def test_batches_computed_concurrently_equal_those_computed_alone(tiny_models: dict[str, Path]) -> None:
    engine = _inflight_engine(tiny_models["fill-mask"])
    rng = random.Random(3)
    batches = [inputs_of_lengths([rng.randint(2, 60) for _ in range(rng.randint(1, 6))]) for _ in range(24)]
    batches = [[replace(item, positions=(0, len(item.ids) - 1)) for item in batch] for batch in batches]
    alone = [engine.run(batch) for batch in batches]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(engine.run, batches))
    for a, b in zip(alone, together, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_head_that_copies_off_the_device_twice_is_refused(tiny_models: dict[str, Path]) -> None:
    engine = _inflight_engine(tiny_models["embedding"])

    def twice(out: Any, inputs: Any) -> Any:
        out.host(out.hidden())
        return out.host(out.hidden())  # the next batch may already be overwriting these states

    engine._head = twice
    with pytest.raises(RuntimeError, match="copies off the device once"):
        engine.run(inputs_of_lengths([5]))


def test_a_server_keeps_two_batches_in_flight_and_answers_each_request_its_own(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    running, most = [0], [0]
    lock = threading.Lock()
    run = CudaEngine.run

    def counted(self: CudaEngine, inputs: Any) -> Any:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.02)  # a batch that takes a while, so the next one is there to overlap it
            return run(self, inputs)
        finally:
            with lock:
                running[0] -= 1

    argv = ["--engine", "cuda", "--inflight-batches", "2", "--cache-entries", "0", "--max-batch-requests", "3"]
    server = ServerThread(config_for(tiny_models["embedding"], *argv)).start()
    requests = [[f"text {i} {j}" for j in range(i % 4 + 1)] for i in range(30)]
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            alone = [stub.Embed(pb.EmbedRequest(inputs=inputs), timeout=30) for inputs in requests]
            monkeypatch.setattr(CudaEngine, "run", counted)
            futures = [stub.Embed.future(pb.EmbedRequest(inputs=inputs), timeout=30) for inputs in requests]
            for future, reply in zip(futures, alone, strict=True):
                for a, b in zip(future.result().embeddings, reply.embeddings, strict=True):
                    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6)
    finally:
        server.stop()
    assert most[0] == 2  # two batches at once, never more


# Calls that, on a GPU, copy between host and device and wait for everything queued before them.
WAITING_CALLS = {
    torch.tensor,
    torch.as_tensor,
    torch.nonzero,
    torch.Tensor.new_tensor,
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.Tensor.nonzero,
}


class WaitingCalls(TorchFunctionMode):
    """Records the calls of WAITING_CALLS, indexing by a list or a mask, and repeat_interleave without its size."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.paused = False

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not self.paused:
            index = args[1] if func is torch.Tensor.__getitem__ else None
            picks = index if isinstance(index, tuple) else (index,)
            gathers = any(isinstance(i, list) or getattr(i, "dtype", None) is torch.bool for i in picks)
            if func in WAITING_CALLS or gathers:
                self.calls.append(getattr(func, "__name__", repr(func)))
            if getattr(func, "__name__", "") == "repeat_interleave" and "output_size" not in kwargs:
                self.calls.append("repeat_interleave without output_size")
        return func(*args, **kwargs)


def test_no_head_waits_for_the_device_before_its_copy_to_the_host(
    engines: dict[str, tuple[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wait inside a head would stall the batch behind it: while the device is held, only queued work may happen.
    watch = WaitingCalls()
    copy_to_host = CudaOutput.host

    def host(self: CudaOutput, tensor: torch.Tensor) -> Any:
        watch.paused = True  # the one copy that is meant to wait
        try:
            return copy_to_host(self, tensor)
        finally:
            watch.paused = False

    monkeypatch.setattr(CudaOutput, "host", host)
    for task, (cuda, _) in engines.items():
        head = cuda._head

        def watched(out: Any, inputs: Any, head: Any = head) -> Any:
            with watch:
                return head(out, inputs)

        monkeypatch.setattr(cuda, "_head", watched)
        batch = [replace(item, positions=(1, 2), normalize=True) for item in inputs_of_lengths([5, 9, 3])]
        assert len(cuda.run(batch)) == 3
        assert watch.calls == [], (task, watch.calls)
