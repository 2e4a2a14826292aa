"""The packed engine: BERT encoders computed on each batch's real tokens only (model_server.backend.packed_bert).

It serves BERT architectures with absolute positions, the default where it applies. Task heads use the BERT
model class's own layers (pooler and classifier, the language-model head `cls`) on the packed hidden states.
On CPU the projections run on oneDNN where torch has it (fp32, or per-token int8 with the element-wise stages
fused by torch.compile unless `int8_fuse` is off), else int8 is torch's dynamic quantisation; attention runs
in the packed attention kernel (model_server.backend.native_attention) unless `attention` is torch or the kernel
does not apply (then PyTorch's scaled-dot-product attention over blocks of similar-length sequences). On CUDA
everything is PyTorch's, at fp32, fp16 or bf16.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model_server.backend import ModelInput, native_attention
from model_server.backend.onednn import int8_path, onednn_available
from model_server.backend.packed_bert import PackedModel, plan, supports
from model_server.backend.torch_engine import TorchEngine, quantize_int8
from model_server.config import EngineConfig
from model_server.errors import ConfigError
from model_server.tasks.base import TaskSpec

log = logging.getLogger(__name__)


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
        logits: torch.Tensor = _layer(self._model.mlm_head, "language-model head")(self._states[list(rows)])
        return logits


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
        packed = PackedModel(model).eval().to(device)
        if device.type == "cpu" and onednn_available():
            kernels = packed.encoder.use_onednn(int8=precision == "int8", fuse=settings.int8_fuse)
            log.info("packed engine: projections by %s", kernels)
            if precision == "int8":
                log.info("packed engine: %s", int8_path().describe())
        elif precision == "int8":
            packed = quantize_int8(packed)
            log.info("packed engine: int8 by torch's dynamic quantisation (no oneDNN; per-batch 7-bit activations)")
        if device.type == "cpu":
            log.info("packed engine: attention by %s", self._attention(packed, settings.attention))
        self.model = packed
        super().__init__(task, device, precision, model.config)

    @staticmethod
    def _attention(packed: PackedModel, attention: str) -> str:
        """Puts the packed attention kernel in where asked for and applicable; returns what runs, in words."""
        if attention == "torch":
            return "PyTorch scaled-dot-product attention (--attention torch)"
        kernel, how = native_attention.load()
        if kernel is not None and not packed.encoder.use_native_attention(kernel):
            how = "PyTorch scaled-dot-product attention (the packed kernel takes fp32, head size 32 or 64)"
        return how

    @staticmethod
    def supports(config: Any) -> bool:
        """BERT encoders with absolute positions (see model_server.backend.packed_bert.supports)."""
        return supports(config)

    def encode(self, inputs: Sequence[ModelInput]) -> PackedOutput:
        """The hidden states of the batch's tokens, packed."""
        lengths = [len(item.ids) for item in inputs]
        ids = torch.from_numpy(np.fromiter((t for item in inputs for t in item.ids), np.int64, sum(lengths)))
        packing = plan(lengths, self._device)
        starts = list(np.cumsum([0, *lengths[:-1]]).tolist())
        states = self.model.encoder(ids.to(self._device), packing)
        return PackedOutput(self.model, states, packing.starts, packing.lengths, starts)
