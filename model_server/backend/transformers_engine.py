"""The transformers engine: the checkpoint's own model class, run on batches padded to their longest input.

It serves every architecture transformers loads for the task; each task's head comes from the model class
itself (sequence and token classification run the whole class; fill-mask runs the encoder, then the language
model head on the masked positions only where the class has a separable head, BERT's `cls` or RoBERTa's
`lm_head`). Attention is the model class's SDPA implementation. Precision: fp32, fp16/bf16 on CUDA, int8 by
torch's dynamic quantisation of Linear layers on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model_server.backend import ModelInput
from model_server.backend.torch_engine import TorchEngine, quantize_int8
from model_server.config import EngineConfig
from model_server.tasks.base import TaskSpec


def _sparse_mlm_head(model: Any) -> Any:
    """The language-model head when it can run on the masked positions alone (BERT `cls`, RoBERTa `lm_head`)."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if head is not None:
            return head
    return None


class PaddedOutput:
    """A padded batch's encoder output, computed on demand and handed over in the packed layout."""

    def __init__(
        self,
        engine: TransformersEngine,
        ids: torch.Tensor,
        mask: torch.Tensor,
        lengths: list[int],
        types: torch.Tensor | None = None,
    ) -> None:
        self._engine = engine
        self._ids = ids
        self._mask = mask
        self._types = types
        self._real = mask.bool()  # picks the real tokens of [inputs, longest] in packed (row-major) order
        self.lengths = lengths
        self.starts = list(np.cumsum([0, *lengths[:-1]]).tolist())

    def _states(self) -> torch.Tensor:
        states: torch.Tensor = self._engine.base(**self._inputs()).last_hidden_state
        return states

    def _logits(self) -> torch.Tensor:
        logits: torch.Tensor = self._engine.model(**self._inputs()).logits
        return logits

    def _inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self._ids, "attention_mask": self._mask}
        if self._types is not None:
            inputs["token_type_ids"] = self._types
        return inputs

    def hidden(self) -> torch.Tensor:
        """See EncoderOutput."""
        return self._states()[self._real]

    def sequence_logits(self) -> torch.Tensor:
        """See EncoderOutput."""
        return self._logits()

    def token_logits(self) -> torch.Tensor:
        """See EncoderOutput."""
        return self._logits()[self._real]

    def vocabulary_logits(self, rows: Sequence[int]) -> torch.Tensor:
        """See EncoderOutput: only the given tokens' rows of the padded batch go through the head."""
        sequences = np.searchsorted(self.starts, rows, side="right") - 1
        at = (sequences.tolist(), (np.asarray(rows) - np.asarray(self.starts)[sequences]).tolist())
        head = self._engine.mlm_head
        if head is None:
            return self._logits()[at]
        logits: torch.Tensor = head(self._states()[at])
        return logits

    def on_device(self, array: np.ndarray[Any, Any]) -> torch.Tensor:
        """See EncoderOutput (a padded batch's own indexing waits for the device anyway: a plain copy)."""
        return torch.from_numpy(np.ascontiguousarray(array)).to(self._ids.device)

    def host(self, tensor: torch.Tensor) -> np.ndarray[Any, Any]:
        """See EncoderOutput: a synchronous copy."""
        return tensor.cpu().numpy()


class TransformersEngine(TorchEngine):
    """Any architecture transformers loads, on padded batches."""

    name = "transformers"

    def __init__(
        self,
        model: Any,
        task: TaskSpec[Any, Any],
        device: torch.device,
        precision: str,
        settings: EngineConfig,
        pad_id: int,
    ) -> None:
        self.model: Any = (quantize_int8(model) if precision == "int8" else model).to(device)
        self.base: Any = self.model.base_model
        self.mlm_head: Any = _sparse_mlm_head(self.model)
        self._pad_id = pad_id
        super().__init__(task, device, precision, model.config)

    @staticmethod
    def supports(config: Any) -> bool:
        """Every model transformers loads."""
        return True

    def encode(self, inputs: Sequence[ModelInput]) -> PaddedOutput:
        """The batch padded to its longest input, with its attention mask."""
        lengths = [len(i.ids) for i in inputs]
        ids = np.full((len(inputs), max(lengths)), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(inputs), max(lengths)), dtype=np.int64)
        typed = self.typed(inputs)
        types = np.zeros_like(ids)
        for row, item in enumerate(inputs):
            ids[row, : len(item.ids)] = item.ids
            mask[row, : len(item.ids)] = 1
            if typed and item.type_ids:
                types[row, : len(item.type_ids)] = item.type_ids
        device = self._device
        return PaddedOutput(
            self,
            torch.from_numpy(ids).to(device),
            torch.from_numpy(mask).to(device),
            lengths,
            torch.from_numpy(types).to(device) if typed else None,
        )
