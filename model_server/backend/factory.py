"""Chooses and builds the engine that runs a checkpoint: the one place that knows every engine class."""

from __future__ import annotations

from typing import Any

import torch

from model_server.backend.cuda_engine import CudaEngine
from model_server.backend.packed_engine import PackedEngine
from model_server.backend.torch_engine import TorchEngine, load_model_class, resolve_device, resolve_precision
from model_server.backend.transformers_engine import TransformersEngine
from model_server.checkpoint import Checkpoint
from model_server.config import ENGINE_KINDS, EngineConfig
from model_server.errors import ConfigError
from model_server.tasks import spec

# By preference: `--engine auto` takes the first that supports the model and prefers the device (auto_devices).
ENGINES: dict[str, type[CudaEngine] | type[PackedEngine] | type[TransformersEngine]] = {
    CudaEngine.name: CudaEngine,
    PackedEngine.name: PackedEngine,
    TransformersEngine.name: TransformersEngine,
}
assert tuple(ENGINES) == ENGINE_KINDS, "config.ENGINE_KINDS lists the engines the command line offers"


def resolve_engine(kind: str, config: Any, device_type: str = "cpu") -> str:
    """'auto' becomes the first engine (by preference) that runs this model and is meant for this device type;
    an explicit choice is checked (any engine runs on any device: the cuda engine runs eagerly on CPU)."""
    if kind == "auto":
        return next(
            name for name, engine in ENGINES.items() if device_type in engine.auto_devices and engine.supports(config)
        )
    if kind not in ENGINES:
        raise ConfigError(f"--engine {kind}: expected auto, {', '.join(ENGINES)}")
    if not ENGINES[kind].supports(config):
        raise ConfigError(
            f"--engine {kind} runs BERT encoders with absolute positions; this model is "
            f"{getattr(config, 'model_type', 'unknown')!r}: use --engine transformers or auto"
        )
    return kind


def create_engine(checkpoint: Checkpoint, settings: EngineConfig, pad_id: int = 0) -> TorchEngine:
    """Loads the checkpoint for its task into the engine the settings choose (blocking)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(resolve_device(settings.device))
    precision = resolve_precision(settings.precision, device.type)
    task = spec(checkpoint.task)
    model = load_model_class(checkpoint, task, precision)
    engine = ENGINES[resolve_engine(settings.kind, model.config, device.type)]
    if (settings.inflight_batches or 1) > 1 and engine is not CudaEngine:
        raise ConfigError(
            f"--inflight-batches {settings.inflight_batches}: only the cuda engine runs batches concurrently; "
            f"this model runs on the {engine.name} engine, one batch at a time (leave --inflight-batches unset)"
        )
    return engine(model, task, device, precision, settings, pad_id)
