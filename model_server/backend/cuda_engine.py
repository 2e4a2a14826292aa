"""The CUDA engine: BERT on a packed batch padded to a token-count bucket, one variable-length attention call per
layer, and one CUDA graph per bucket captured at start, so a batch of any composition replays a graph.

What a batch costs on the GPU is then one host-to-device copy (the layout vector, from pinned memory), one graph
launch, the task head's few kernels and its copy of the results to the host: no per-shape plan building, no
per-batch kernel selection, and a launch count that does not depend on the batch's composition.

Batches overlap (`inflight_batches`, 2 on a GPU): a batch holds the device from its layout copy until its results'
copy off the device is queued, then waits for that copy without it, so the next batch's layout is built, copied
and its graph queued while this one still computes. One stream orders them: a graph's static tensors and the
shared graph memory pool are reused only after the previous batch's head has read them.

Per layer: the fused query/key/value projection (model_server.backend.packed_bert), variable-length attention
(model_server.backend.varlen), the output projection, residual and layer norm, the feed-forward pair and again
residual and layer norm, all PyTorch ops. Fusion, by what pays on a GPU: biases ride in the matrix multiplies
(cuBLASLt's bias epilogue, which F.linear's addmm uses for 2-D fp16/bf16 inputs); GELU stays its own
element-wise kernel because cuBLASLt's fused GELU epilogue is the tanh approximation and BERT uses the exact
erf form; residual add and layer norm stay two kernels. Inside a CUDA graph these cost memory passes, not
launches (unmeasured).

On CPU (and on CUDA when no capturable attention applies, e.g. fp32) the same code runs eagerly: CI checks the
layout, the padding and the layer loop against transformers there, with the reference attention.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import accumulate
from typing import Any

import numpy as np
import torch

from model_server.backend import ModelInput
from model_server.backend.buckets import Layout, fill, layout_for, sequence_slots, token_buckets
from model_server.backend.packed_bert import PackedBertEncoder, PackedModel, supports
from model_server.backend.packed_engine import PackedOutput
from model_server.backend.torch_engine import TorchEngine
from model_server.backend.varlen import VarlenAttention, choose
from model_server.config import DEFAULT_BATCH_TOKENS, EngineConfig
from model_server.tasks.base import FloatArray, TaskSpec

log = logging.getLogger(__name__)


class VarlenEncoder:
    """The packed BERT encoder's weights run over a bucket's layout vector with variable-length attention."""

    def __init__(self, encoder: PackedBertEncoder, attention: VarlenAttention, max_len: int) -> None:
        self.encoder = encoder
        self.attention = attention
        self.max_len = max_len  # fixed per model, so a captured graph's attention grid fits every batch

    def __call__(self, packed: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Hidden states [layout.tokens, hidden] of a layout vector (int32, on the model's device)."""
        e = self.encoder
        offsets = packed[layout.offsets]
        x: torch.Tensor = e.norm(
            e.word(packed[: layout.tokens]) + e.position(packed[layout.positions]) + e.token_type(packed[layout.types])
        )
        hidden = e.hidden_size
        with self.attention.scope():
            for layer in e._typed_layers:
                qkv = layer.qkv(x).view(-1, 3, layer.heads, layer.head_dim)
                context = self.attention.attend(qkv[:, 0], qkv[:, 1], qkv[:, 2], offsets, self.max_len)
                x = layer.norm1(layer.out(context.reshape(-1, hidden)) + x)
                x = layer.norm2(layer.down(layer.act(layer.up(x))) + x)
        return x


@dataclass(frozen=True)
class CapturedBucket:
    """One bucket's CUDA graph and the static tensors it reads and writes."""

    layout: Layout
    graph: Any  # torch.cuda.CUDAGraph
    packed: torch.Tensor
    states: torch.Tensor


class DeviceTurn:
    """One batch's hold on the device: taken before its first copy to the device, given up (once) when its
    results' copy off the device is queued, or when the batch ends."""

    def __init__(self, lock: threading.Lock) -> None:
        lock.acquire()
        self._lock: threading.Lock | None = lock

    @property
    def held(self) -> bool:
        """Whether this batch still holds the device."""
        return self._lock is not None

    def release(self) -> None:
        """Lets the next batch queue its device work behind this one's."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


class CudaOutput(PackedOutput):
    """A packed batch's hidden states whose copy to the host ends the batch's turn on the device."""

    def __init__(self, turn: DeviceTurn, *args: Any) -> None:
        super().__init__(*args)
        self._turn = turn

    def host(self, tensor: torch.Tensor) -> np.ndarray[Any, Any]:
        """See EncoderOutput: queued into pinned memory, the device handed to the next batch, then waited for."""
        if not self._turn.held:
            # The next batch's graph may already be writing the memory this head reads.
            raise RuntimeError("a task head copies off the device once, as its last device operation")
        if tensor.device.type != "cuda":
            array = tensor.cpu().numpy()
            self._turn.release()
            return array
        pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        pinned.copy_(tensor, non_blocking=True)
        # A blocking event: the waiting thread sleeps instead of spinning a core (CUDA's default with one context
        # on a many-core host), leaving the cores to tokenising and the event loop; the wake-up's few
        # microseconds cost no GPU time, as the next batch is already queued behind this one (unmeasured).
        copied = torch.cuda.Event(blocking=True)  # type: ignore[no-untyped-call]
        copied.record(torch.cuda.current_stream(tensor.device))
        self._turn.release()
        copied.synchronize()  # without the GIL: the event loop and the next batch's preparation run meanwhile
        return pinned.numpy()


class CudaEngine(TorchEngine):
    """BERT on bucket-padded packed tokens, variable-length attention, a CUDA graph per bucket."""

    name = "cuda"
    auto_devices = frozenset({"cuda"})

    def __init__(
        self,
        model: Any,
        task: TaskSpec[Any, Any],
        device: torch.device,
        precision: str,
        settings: EngineConfig,
        pad_id: int,
    ) -> None:
        self.model = PackedModel(model).eval().to(device)
        encoder = self.model.encoder
        head_dim = encoder._typed_layers[0].head_dim
        attention = choose(device, encoder.word.weight.dtype, head_dim)
        self.encoder = VarlenEncoder(encoder, attention, int(model.config.max_position_embeddings))
        self.buckets = token_buckets(settings.bucket_tokens or DEFAULT_BATCH_TOKENS["cuda"])
        self._pad_id = pad_id
        self._use_graphs = device.type == "cuda" and settings.cuda_graphs and attention.capturable
        self._pinned = device.type == "cuda"
        self.graphs: dict[int, CapturedBucket] = {}
        self.eager_batches = 0  # batches run without a graph (CPU, no capturable attention, or too big)
        self._device_lock = threading.Lock()  # see DeviceTurn
        super().__init__(task, device, precision, model.config)
        inflight = settings.inflight_batches or (2 if device.type == "cuda" else 1)
        self.info = replace(self.info, concurrent_batches=inflight)
        log.info(
            "cuda engine: attention %s, %d token buckets up to %d, CUDA graphs %s, %d batches in flight",
            attention.name,
            len(self.buckets),
            self.buckets[-1],
            "at warm-up" if self._use_graphs else "off",
            inflight,
        )

    @staticmethod
    def supports(config: Any) -> bool:
        """BERT encoders with absolute positions (see model_server.backend.packed_bert.supports)."""
        return supports(config)

    def _host_buffer(self, size: int) -> torch.Tensor:
        # Pinned host memory: the copy to the device is a true asynchronous DMA, not a staged pageable copy. One per
        # batch, from torch's pinned-memory cache, which reuses a buffer only once the copies queued from it are
        # done: a batch's layout is written while the previous batch's copy may still be pending.
        return torch.empty(size, dtype=torch.int32, pin_memory=self._pinned)

    def layout_for(self, lengths: Sequence[int]) -> Layout:
        """The layout a batch of these lengths runs in (see model_server.backend.buckets.layout_for)."""
        return layout_for(lengths, self.buckets)

    def run(self, inputs: Sequence[ModelInput]) -> list[FloatArray]:
        """Computes one batch (see model_server.backend.Backend); up to `info.concurrent_batches` at once."""
        layout = self.layout_for([len(item.ids) for item in inputs])
        host = self._host_buffer(layout.size)
        types = [item.type_ids for item in inputs] if self.typed(inputs) else None
        fill(host.numpy(), [item.ids for item in inputs], layout, self._pad_id, types)  # before the turn: host only
        turn = DeviceTurn(self._device_lock)
        try:
            with torch.inference_mode(), self._on_device():
                return self._head(self._encode(host, layout, inputs, turn), inputs)
        finally:
            turn.release()

    def _on_device(self) -> contextlib.AbstractContextManager[Any]:
        # The engine's GPU as the thread's current device: graph capture, replay, streams and events use the
        # current device, which is 0 in every new thread, and `--device cuda:1` must not run half on cuda:0.
        return torch.cuda.device(self._device) if self._device.type == "cuda" else contextlib.nullcontext()

    def _encode(self, host: torch.Tensor, layout: Layout, inputs: Sequence[ModelInput], turn: DeviceTurn) -> CudaOutput:
        lengths = [len(item.ids) for item in inputs]
        captured = self.graphs.get(layout.tokens)
        if captured is not None and captured.layout == layout:
            captured.packed.copy_(host, non_blocking=True)
            captured.graph.replay()
            packed, states = captured.packed, captured.states
        else:
            self.eager_batches += 1
            packed = host.to(self._device, non_blocking=True)
            states = self.encoder(packed, layout)
        first_rows = packed[layout.offsets][: len(lengths)]  # each input's first row, already on the device
        return CudaOutput(
            turn, self.model, states[: sum(lengths)], first_rows, lengths, list(accumulate([0, *lengths[:-1]]))
        )

    def warmup(self, sample: Sequence[int]) -> None:
        """Captures every bucket's CUDA graph (where graphs are on), then runs the usual warm-up batches."""
        if self._use_graphs:
            with torch.inference_mode(), self._on_device():
                self._capture_all()
        super().warmup(sample)

    def _capture_all(self) -> None:
        # One memory pool for every bucket's graph, replayed in any order: safe because each graph's output stays
        # referenced (no later capture reuses it), one stream serialises replays, and a head reads a graph's output
        # only before its one copy to the host (CudaOutput.host refuses a second), i.e. before the next replay.
        pool = torch.cuda.graph_pool_handle()
        try:
            for bucket in reversed(self.buckets):  # the largest first sizes the shared pool once
                self.graphs[bucket] = self._capture(Layout(bucket, sequence_slots(bucket)), pool)
        except RuntimeError:
            log.warning("cuda engine: CUDA graph capture failed; running eagerly", exc_info=True)
            self.graphs.clear()
            self._use_graphs = False
            return
        log.info("cuda engine: captured %d CUDA graphs", len(self.graphs))

    def _capture(self, layout: Layout, pool: Any) -> CapturedBucket:
        length = min(layout.tokens, self.encoder.max_len)
        dummy = [[self._pad_id] * length] * min(layout.tokens // length, layout.slots)
        host = self._host_buffer(layout.size)
        fill(host.numpy(), dummy, layout, self._pad_id)
        packed = host.to(self._device)
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # once outside the graph: library handles, workspaces, kernel choice
            self.encoder(packed, layout)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            states = self.encoder(packed, layout)
        return CapturedBucket(layout, graph, packed, states)
