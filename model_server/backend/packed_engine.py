"""The packed engine: BERT encoders computed on each batch's real tokens only (model_server.backend.packed_bert).

It serves BERT architectures with absolute positions, the default where it applies. Task heads use the BERT
model class's own layers (pooler and classifier, the language-model head `cls`) on the packed hidden states.
On CPU the kernels are chosen at load by timing (model_server.backend.packed_cpu): projections by oneDNN
(fp32, or per-token int8 with the element-wise stages fused by torch.compile unless `int8_fuse` is off) or by
PyTorch, attention by the packed attention kernel (model_server.backend.native_attention) or PyTorch's
scaled-dot-product attention over blocks of similar-length sequences. On CUDA everything is PyTorch's, at fp32,
fp16 or bf16.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import chain
from typing import Any

import numpy as np
import torch

from model_server.backend import ModelInput
from model_server.backend.packed_bert import PackedModel, plan, supports
from model_server.backend.packed_cpu import cpu_model
from model_server.backend.torch_engine import TorchEngine
from model_server.config import EngineConfig
from model_server.errors import ConfigError
from model_server.tasks.base import TaskSpec


def _layer(module: torch.nn.Module | None, what: str) -> torch.nn.Module:
    if module is None:
        raise ConfigError(f"this BERT model class has no {what}")
    return module


class PackedOutput:
    """A packed batch's hidden states; heads run on the rows they need. `first_rows` holds each input's first
    row on the model's device (int32 or int64); `starts` the same on the host."""

    def __init__(
        self,
        model: PackedModel,
        states: torch.Tensor,
        first_rows: torch.Tensor,
        lengths: Sequence[int],
        starts: list[int],
    ) -> None:
        self._model = model
        self._states = states
        self._first_rows = first_rows
        self.lengths = lengths
        self.starts = starts

    def hidden(self) -> torch.Tensor:
        """See EncoderOutput."""
        return self._states

    def sequence_logits(self) -> torch.Tensor:
        """See EncoderOutput: BERT's pooler on each [CLS] vector, then the classifier."""
        pooler: Any = _layer(self._model.pooler, "pooler")
        first = self._states.index_select(0, self._first_rows)
        logits: torch.Tensor = _layer(self._model.classifier, "classifier")(pooler.activation(pooler.dense(first)))
        return logits

    def token_logits(self) -> torch.Tensor:
        """See EncoderOutput."""
        logits: torch.Tensor = _layer(self._model.classifier, "classifier")(self._states)
        return logits

    def vocabulary_logits(self, rows: Sequence[int]) -> torch.Tensor:
        """See EncoderOutput."""
        picked = self._states.index_select(0, self.on_device(np.asarray(rows, dtype=np.int64)))
        logits: torch.Tensor = _layer(self._model.mlm_head, "language-model head")(picked)
        return logits

    def on_device(self, array: np.ndarray[Any, Any]) -> torch.Tensor:
        """See EncoderOutput: on a GPU from pinned memory, asynchronously."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self._states.device.type == "cpu":
            return tensor
        return tensor.pin_memory().to(self._states.device, non_blocking=True)

    def host(self, tensor: torch.Tensor) -> np.ndarray[Any, Any]:
        """See EncoderOutput: a synchronous copy."""
        return tensor.cpu().numpy()


class PackedEngine(TorchEngine):
    """BERT on packed tokens, no padding."""

    name = "packed"

    def __init__(
        self,
        model: Any,
        task: TaskSpec[Any, Any],
        device: torch.device,
        precision: str,
        settings: EngineConfig,
        pad_id: int,
    ) -> None:
        kernels = ""
        if device.type == "cpu":
            packed, kernels = cpu_model(model, precision, settings)
        else:
            packed = PackedModel(model).eval().to(device)
        self.model = packed
        super().__init__(task, device, precision, model.config)
        self.info = replace(self.info, kernels=kernels)

    @staticmethod
    def supports(config: Any) -> bool:
        """BERT encoders with absolute positions (see model_server.backend.packed_bert.supports)."""
        return supports(config)

    def encode(self, inputs: Sequence[ModelInput]) -> PackedOutput:
        """The hidden states of the batch's tokens, packed."""
        lengths = [len(item.ids) for item in inputs]
        ids = torch.from_numpy(np.fromiter(chain.from_iterable(item.ids for item in inputs), np.int64, sum(lengths)))
        packing = plan(lengths, self._device)
        starts = list(np.cumsum([0, *lengths[:-1]]).tolist())
        types = None
        if self.typed(inputs):
            packed_types = (t for item in inputs for t in (item.type_ids or (0,) * len(item.ids)))
            types = torch.from_numpy(np.fromiter(packed_types, np.int64, sum(lengths))).to(self._device)
        states = self.model.encoder(ids.to(self._device), packing, types)
        return PackedOutput(self.model, states, packing.starts, packing.lengths, starts)
