"""Engines: chosen by one factory, configured by typed settings (flags, with environment variables as defaults)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

from model_server.backend.factory import ENGINES, create_engine, resolve_engine
from model_server.backend.packed_engine import PackedEngine
from model_server.backend.transformers_engine import TransformersEngine
from model_server.checkpoint import inspect_checkpoint
from model_server.config import ENGINE_KINDS, EngineConfig, build_parser, engine_defaults, parse_args
from model_server.errors import ConfigError
from model_server.tasks import ModelInput, Pooling
from tests.server import checkpoints

BATCH = [ModelInput((2, *(5 + i % 90 for i in range(n)), 3), Pooling.MEAN) for n in (3, 30, 7)]


def test_environment_variables_set_defaults_that_flags_override() -> None:
    assert parse_args([], env={}).engine == EngineConfig()
    env = {"BERTMESH_INT8_FUSE": "0", "BERTMESH_ATTENTION": "torch", "BERTMESH_MKL_AMD": "0"}
    off = EngineConfig(int8_fuse=False, attention="torch", mkl_amd=False)
    assert engine_defaults(env) == off
    assert parse_args([], env=env).engine == off
    flags = ["--int8-fuse", "--attention", "auto", "--mkl-amd", "--engine", "transformers", "--threads", "3"]
    assert parse_args(flags, env=env).engine == EngineConfig(kind="transformers", threads=3)
    assert parse_args(["--no-int8-fuse", "--no-mkl-amd"], env={}).engine == EngineConfig(int8_fuse=False, mkl_amd=False)
    kernels = {"BERTMESH_ATTENTION": "native", "BERTMESH_PROJECTIONS": "torch"}
    assert parse_args([], env=kernels).engine == EngineConfig(attention="native", projections="torch")
    assert parse_args(["--projections", "onednn"], env=kernels).engine.projections == "onednn"


def test_serve_help_documents_every_engine_flag() -> None:
    text = " ".join(build_parser(env={}).format_help().split())
    flags = (
        "--engine",
        "--device",
        "--precision",
        "--threads",
        "--int8-fuse",
        "--attention",
        "--projections",
        "--mkl-amd",
    )
    for flag in flags:
        assert flag in text
    for variable in (
        "BERTMESH_INT8_FUSE=0",
        "BERTMESH_ATTENTION=torch",
        "BERTMESH_PROJECTIONS=torch",
        "BERTMESH_MKL_AMD=0",
    ):
        assert variable in text


def test_the_factory_offers_the_engines_the_command_line_names() -> None:
    assert tuple(ENGINES) == ENGINE_KINDS
    bert, roberta = transformers.BertConfig(), transformers.RobertaConfig()
    assert resolve_engine("auto", bert) == "packed" and resolve_engine("auto", roberta) == "transformers"
    assert resolve_engine("transformers", bert) == "transformers"
    with pytest.raises(ConfigError, match="--engine packed runs BERT encoders"):
        resolve_engine("packed", roberta)


def layers(engine: Any) -> list[Any]:
    assert isinstance(engine, PackedEngine)
    return list(engine.model.encoder.layers)


def test_attention_setting_chooses_the_kernel_and_outputs_agree(head_dim_32: Path) -> None:
    checkpoint = inspect_checkpoint(head_dim_32)
    native = create_engine(checkpoint, EngineConfig(device="cpu", attention="native"))
    plain = create_engine(checkpoint, EngineConfig(device="cpu", attention="torch"))
    assert all(layer.native is not None for layer in layers(native))
    assert all(layer.native is None for layer in layers(plain))
    assert np.allclose(np.stack(native.run(BATCH)), np.stack(plain.run(BATCH)), atol=1e-5)


def test_int8_fuse_setting_reaches_the_packed_engine(head_dim_32: Path) -> None:
    engine = create_engine(
        inspect_checkpoint(head_dim_32), EngineConfig(device="cpu", precision="int8", int8_fuse=False)
    )
    assert isinstance(engine, PackedEngine)
    stages = engine.model.encoder.int8_stages
    assert stages is not None and not stages.compiled


def test_both_engines_give_the_same_outputs_for_every_task(tiny_models: dict[str, Path]) -> None:
    for task, path in tiny_models.items():
        checkpoint = inspect_checkpoint(path)
        packed = create_engine(checkpoint, EngineConfig(device="cpu", kind="packed"))
        padded = create_engine(checkpoint, EngineConfig(device="cpu", kind="transformers"))
        assert isinstance(packed, PackedEngine) and isinstance(padded, TransformersEngine)
        batch = [ModelInput(item.ids, Pooling.CLS if n % 2 else Pooling.MEAN, (1, 2)) for n, item in enumerate(BATCH)]
        for ours, theirs in zip(packed.run(batch), padded.run(batch), strict=True):
            assert ours.shape == theirs.shape and np.allclose(ours, theirs, atol=1e-4), task


@pytest.mark.parametrize("kind", ["packed", "transformers", "cuda"])
def test_the_head_normalises_exactly_the_inputs_that_ask(tiny_models: dict[str, Path], kind: str) -> None:
    settings = EngineConfig(device="cpu", kind=kind, bucket_tokens=256)
    engine = create_engine(inspect_checkpoint(tiny_models["embedding"]), settings)
    batch = [ModelInput(item.ids, Pooling.CLS if n % 3 else Pooling.MEAN) for n, item in enumerate(BATCH * 2)]
    raw = engine.run(batch)
    asked = engine.run([replace(item, normalize=n % 2 == 0) for n, item in enumerate(batch)])
    for n, (plain, out) in enumerate(zip(raw, asked, strict=True)):
        expected = plain / np.linalg.norm(plain) if n % 2 == 0 else plain
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        assert n % 2 or abs(np.linalg.norm(out) - 1) < 1e-5


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_a_model_with_one_token_type_ignores_the_pair_types(tmp_path: Path, kind: str) -> None:
    # A cross-encoder whose embedding has one token type row: the second segment's type 1 would index past it
    # (on CUDA a device-side assert that poisons the process), so every engine drops the types, as transformers
    # does when it is given none.
    path = checkpoints.build(tmp_path / "untyped", "rerank", type_vocab_size=1)
    ids, types = (2, 10, 11, 3, 12, 13, 3), (0, 0, 0, 0, 1, 1, 1)
    engine = create_engine(inspect_checkpoint(path), EngineConfig(device="cpu", kind=kind))
    [score] = engine.run([ModelInput(ids, type_ids=types)])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    with torch.inference_mode():
        expected = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(np.asarray(score).reshape(-1), expected.reshape(-1), atol=1e-5)
