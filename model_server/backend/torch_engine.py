"""What every torch engine shares: device and precision checks, loading the checkpoint's model class, int8
dynamic quantisation, and the run loop (the engine encodes a batch, the task's head turns it into outputs).

Engines are the classes behind model_server.backend.Backend that model_server.backend.factory chooses from:
model_server.backend.packed_engine and model_server.backend.transformers_engine.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import Any

import torch

from model_server.backend import BackendInfo, ModelInput
from model_server.checkpoint import Checkpoint
from model_server.errors import ConfigError
from model_server.tasks.base import EncoderOutput, FloatArray, Pooling, TaskSpec

_SHOWN_WEIGHTS = 4  # missing weights a refusal names; the count gives the rest
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}


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
        raise ConfigError("--precision int8 runs on CPU only; on CUDA use fp16 or bf16")
    if precision not in DTYPES:
        raise ConfigError(f"--precision {precision}: expected auto, fp32, fp16, bf16 or int8")
    return precision


def load_model_class(checkpoint: Checkpoint, task: TaskSpec[Any, Any], precision: str) -> Any:
    """The checkpoint loaded into the task's transformers model class (safetensors, local files only), in eval
    mode on the CPU."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the directory is the model
    try:
        model, info = getattr(transformers, task.model_class).from_pretrained(
            str(checkpoint.path),
            local_files_only=True,
            use_safetensors=True,
            attn_implementation="sdpa",
            dtype=DTYPES[precision],
            output_loading_info=True,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load {checkpoint.path} as {task.task.value}: {exc}") from exc
    # Mismatched shapes are re-initialised too (e.g. a classifier trained for other labels).
    fresh = {*info["missing_keys"], *(key for key, *_ in info["mismatched_keys"])}
    refuse_fresh_weights(checkpoint, task, fresh)
    return model.eval()


def refuse_fresh_weights(checkpoint: Checkpoint, task: TaskSpec[Any, Any], fresh: Collection[str]) -> None:
    """ConfigError when the task would run weights the checkpoint lacks: transformers fills them with random
    values and the server would answer with noise."""
    used = sorted(key for key in fresh if task.unused_modules.isdisjoint(key.split(".")))
    if not used:
        return
    shown = ", ".join(used[:_SHOWN_WEIGHTS]) + (", ..." if len(used) > _SHOWN_WEIGHTS else "")
    raise ConfigError(
        f"{checkpoint.path} cannot serve {task.task.value}: {len(used)} weights of {task.model_class} are not "
        f"in the checkpoint and would be random ({shown}); this checkpoint is a {checkpoint.architecture}: "
        f"serve one trained for {task.task.value}, or pass the --task it was trained for"
    )


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of every Linear layer: weights int8 per output channel, activations quantised
    per batch. Per-channel weights matter: per-tensor scales cost MiniLM a mean cosine of 0.91 to fp32, per
    channel 0.96 (min 0.87: per-batch activation scales; the oneDNN path's per-token scales keep min 0.98)."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice; the kernels are current
        return torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}
        )


class TorchEngine:
    """A loaded model run by torch: subclasses encode a batch; the task's head makes each input's output.

    Subclasses take (model class instance, task, device, precision, engine settings, pad id) and name
    themselves in `name`, the value of `--engine`.
    """

    name: str
    auto_devices: frozenset[str] = frozenset({"cpu", "cuda"})  # device types where `--engine auto` may choose it

    def __init__(self, task: TaskSpec[Any, Any], device: torch.device, precision: str, config: Any) -> None:
        self._head = task.head
        self._device = device
        # Models with one token type (RoBERTa-style, some cross-encoders) get none: a pair's type 1 would index
        # past their embedding, an IndexError on CPU and, on CUDA, a device-side assert that fails the process.
        self._typed = int(getattr(config, "type_vocab_size", 0) or 0) > 1
        self.info = BackendInfo(
            device=str(device),
            precision=precision,
            hidden_size=int(config.hidden_size),
            num_labels=int(getattr(config, "num_labels", 0) or 0),
            engine=self.name,
        )

    @staticmethod
    def supports(config: Any) -> bool:
        """Whether this engine runs the model a transformers config describes."""
        raise NotImplementedError

    def typed(self, inputs: Sequence[ModelInput]) -> bool:
        """Whether the batch's token types reach the model: some input (a pair) brings them and it has more than one."""
        return self._typed and any(item.type_ids for item in inputs)

    def encode(self, inputs: Sequence[ModelInput]) -> EncoderOutput:
        """The batch's encoder output (called under torch.inference_mode)."""
        raise NotImplementedError

    def run(self, inputs: Sequence[ModelInput]) -> list[FloatArray]:
        """Computes one batch (see model_server.backend.Backend)."""
        with torch.inference_mode():
            return self._head(self.encode(inputs), inputs)

    def warmup(self, sample: Sequence[int]) -> None:
        """Runs a short, a medium and the longest batch once each."""
        for length in sorted({min(8, len(sample)), min(64, len(sample)), len(sample)}):
            ids = tuple(sample[: length - 1]) + tuple(sample[-1:])
            # Pooling and a mask position: each task's head takes what it reads and ignores the rest.
            self.run([ModelInput(ids, Pooling.MEAN, (0,))] * 2)
