"""The torch backend: Hugging Face BERT-family checkpoints (safetensors), loaded by transformers' model classes.

Two engines run them. `packed` (BERT architectures, the default where it applies) computes on the batch's real
tokens only (model_server.backend.packed_bert); `transformers` runs the model class itself on batches padded to
their longest input, for every other architecture. Attention is PyTorch SDPA in both. Precision: fp32 (CPU
default), fp16/bf16 on CUDA, int8 dynamic quantisation of Linear layers on CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model_server.backend import BackendInfo, ModelInput, native_attention
from model_server.backend.onednn import int8_path, onednn_available
from model_server.backend.packed_bert import PackedModel, first_tokens, mean_pool, plan, supports
from model_server.checkpoint import Checkpoint
from model_server.errors import ConfigError
from model_server.tasks import FloatArray, Pooling, Task

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}


def resolve_device(device: str) -> str:
    """'auto' becomes cuda when a GPU is visible, else cpu; explicit choices are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is visible; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """'auto' becomes fp16 on CUDA and fp32 on CPU; combinations that cannot run are refused."""
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision in ("fp16", "bf16") and device == "cpu":
        raise ConfigError(f"--precision {precision} needs a CUDA device; on CPU use fp32 or int8")
    if precision == "int8" and device != "cpu":
        raise ConfigError("--precision int8 (dynamic quantisation) runs on CPU only; on CUDA use fp16 or bf16")
    if precision not in _DTYPES:
        raise ConfigError(f"--precision {precision}: expected auto, fp32, fp16, bf16 or int8")
    return precision


def resolve_engine(engine: str, config: Any) -> str:
    """'auto' becomes packed for architectures the packed engine reproduces, else transformers."""
    if engine == "auto":
        return "packed" if supports(config) else "transformers"
    if engine == "packed" and not supports(config):
        raise ConfigError(
            f"--engine packed runs BERT encoders with absolute positions; this model is "
            f"{getattr(config, 'model_type', 'unknown')!r}: use --engine transformers or auto"
        )
    if engine not in ("packed", "transformers"):
        raise ConfigError(f"--engine {engine}: expected auto, packed or transformers")
    return engine


def _model_class(task: Task) -> Any:
    import transformers

    return {
        Task.EMBEDDING: transformers.AutoModel,
        Task.SEQUENCE_CLASSIFICATION: transformers.AutoModelForSequenceClassification,
        Task.TOKEN_CLASSIFICATION: transformers.AutoModelForTokenClassification,
        Task.FILL_MASK: transformers.AutoModelForMaskedLM,
    }[task]


class TorchBackend:
    """A checkpoint loaded into torch for one task."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        device: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        pad_id: int = 0,
        engine: str = "auto",
    ) -> None:
        import transformers

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        if threads:
            torch.set_num_threads(threads)
        self._task = checkpoint.task
        self._pad_id = pad_id
        self._device = torch.device(resolve_device(device))
        precision = resolve_precision(precision, self._device.type)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the directory is the model
        try:
            model = _model_class(self._task).from_pretrained(
                str(checkpoint.path),
                local_files_only=True,
                use_safetensors=True,
                attn_implementation="sdpa",
                dtype=_DTYPES[precision],
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load {checkpoint.path} as {self._task.value}: {exc}") from exc
        model.eval()
        config = model.config
        self._engine = resolve_engine(engine, config)
        self._packed: PackedModel | None = None
        self._model: Any = None
        self._head: tuple[Any, Any] | None = None
        if self._engine == "packed":
            packed = PackedModel(model, self._task.value).eval().to(self._device)
            if self._device.type == "cpu" and onednn_available():
                # BERTMESH_INT8_FUSE=0 keeps the int8 stages eager (for A/B measurement: `python -m bench engine`).
                fuse = os.environ.get("BERTMESH_INT8_FUSE", "1") != "0"
                kernels = packed.encoder.use_onednn(int8=precision == "int8", fuse=fuse)
                log.info("packed engine: projections by %s", kernels)
                if precision == "int8":
                    log.info("packed engine: %s", int8_path().describe())
            elif precision == "int8":
                packed = _quantize_int8(packed)
                log.info("packed engine: int8 by torch's dynamic quantisation (no oneDNN; per-batch 7-bit activations)")
            if self._device.type == "cpu":
                kernel, how = native_attention.load()
                if kernel is not None and not packed.encoder.use_native_attention(kernel):
                    how = "PyTorch scaled-dot-product attention (the packed kernel takes fp32, head size 32 or 64)"
                log.info("packed engine: attention by %s", how)
            self._packed = packed
        else:
            self._model = (_quantize_int8(model) if precision == "int8" else model).to(self._device)
            self._head = self._sparse_mlm_head(self._model) if self._task is Task.FILL_MASK else None
        self.info = BackendInfo(
            device=str(self._device),
            precision=precision,
            hidden_size=int(config.hidden_size),
            num_labels=int(getattr(config, "num_labels", 0) or 0),
            engine=self._engine,
        )

    @staticmethod
    def _sparse_mlm_head(model: Any) -> tuple[Any, Any] | None:
        """(encoder, head) when the head can run on the masked positions alone (BERT `cls`, RoBERTa `lm_head`)."""
        for name in ("cls", "lm_head"):
            head = getattr(model, name, None)
            if head is not None:
                return model.base_model, head
        return None

    def warmup(self, sample: Sequence[int]) -> None:
        """Runs a short, a medium and the longest batch once each."""
        for length in sorted({min(8, len(sample)), min(64, len(sample)), len(sample)}):
            ids = tuple(sample[: length - 1]) + tuple(sample[-1:])
            positions = (0,) if self._task is Task.FILL_MASK else None
            self.run([ModelInput(ids, Pooling.MEAN, positions)] * 2)

    def _tensors(self, inputs: Sequence[ModelInput]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(i.ids) for i in inputs)
        ids = np.full((len(inputs), longest), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(inputs), longest), dtype=np.int64)
        for row, item in enumerate(inputs):
            ids[row, : len(item.ids)] = item.ids
            mask[row, : len(item.ids)] = 1
        return torch.from_numpy(ids).to(self._device), torch.from_numpy(mask).to(self._device)

    def run(self, inputs: Sequence[ModelInput]) -> list[FloatArray]:
        """Computes one batch (see model_server.backend.Backend)."""
        if self._packed is not None:
            with torch.inference_mode():
                return self._run_packed(self._packed, inputs)
        ids, mask = self._tensors(inputs)
        with torch.inference_mode():
            if self._task is Task.EMBEDDING:
                return self._embed(inputs, ids, mask)
            if self._task is Task.SEQUENCE_CLASSIFICATION:
                logits = self._model(input_ids=ids, attention_mask=mask).logits.float().cpu().numpy()
                return list(logits)
            if self._task is Task.TOKEN_CLASSIFICATION:
                logits = self._model(input_ids=ids, attention_mask=mask).logits.float().cpu().numpy()
                return [logits[row, : len(item.ids)] for row, item in enumerate(inputs)]
            return self._fill_mask(inputs, ids, mask)

    def _run_packed(self, model: PackedModel, inputs: Sequence[ModelInput]) -> list[FloatArray]:
        lengths = [len(item.ids) for item in inputs]
        ids = torch.from_numpy(np.fromiter((t for item in inputs for t in item.ids), np.int64, sum(lengths)))
        packing = plan(lengths, self._device)
        hidden = model.encoder(ids.to(self._device), packing)
        if self._task is Task.EMBEDDING:
            mean = mean_pool(hidden, packing).float().cpu().numpy()
            cls = first_tokens(hidden, packing).float().cpu().numpy()
            return [cls[row] if item.pooling is Pooling.CLS else mean[row] for row, item in enumerate(inputs)]
        if self._task is Task.SEQUENCE_CLASSIFICATION:
            pooled = model.pooler.activation(model.pooler.dense(first_tokens(hidden, packing)))
            return list(model.classifier(pooled).float().cpu().numpy())
        if self._task is Task.TOKEN_CLASSIFICATION:
            logits = model.classifier(hidden).float().cpu().numpy()
            starts = packing.starts.tolist()
            return [logits[start : start + length] for start, length in zip(starts, lengths, strict=True)]
        starts = packing.starts.tolist()
        rows = [starts[n] + pos for n, item in enumerate(inputs) for pos in item.positions or ()]
        return _per_input(model.mlm_head(hidden[rows]).float().cpu().numpy(), inputs)

    def _embed(self, inputs: Sequence[ModelInput], ids: torch.Tensor, mask: torch.Tensor) -> list[FloatArray]:
        hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        mean = ((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)).cpu().numpy()
        cls = hidden[:, 0].cpu().numpy()
        return [cls[row] if item.pooling is Pooling.CLS else mean[row] for row, item in enumerate(inputs)]

    def _fill_mask(self, inputs: Sequence[ModelInput], ids: torch.Tensor, mask: torch.Tensor) -> list[FloatArray]:
        rows = [row for row, item in enumerate(inputs) for _ in item.positions or ()]
        cols = [pos for item in inputs for pos in item.positions or ()]
        if self._head is not None:
            encoder, head = self._head
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = head(hidden[rows, cols]).float().cpu().numpy()
        else:
            logits = self._model(input_ids=ids, attention_mask=mask).logits[rows, cols].float().cpu().numpy()
        return _per_input(logits, inputs)


def _per_input(logits: FloatArray, inputs: Sequence[ModelInput]) -> list[FloatArray]:
    """Fill-mask logits of every input's masked positions (rows in input order), split back per input."""
    out, first = [], 0
    for item in inputs:
        count = len(item.positions or ())
        out.append(logits[first : first + count])
        first += count
    return out


def _quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of every Linear layer: weights int8 per output channel, activations quantised
    per batch. Per-channel weights matter: per-tensor scales cost MiniLM a mean cosine of 0.91 to fp32, per
    channel 0.97."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice; the kernels are current
        return torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}
        )
