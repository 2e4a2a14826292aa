"""Fixtures: tiny random checkpoints per task, the bundled MiniLM, and real servers over loopback gRPC."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers

from model_server.client import BertmeshClient
from model_server.config import bundled_model_path
from tests.server import checkpoints
from tests.server.harness import ServerThread, config_for

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TASKS = ("embedding", "sequence-classification", "token-classification", "fill-mask", "rerank")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One random checkpoint per task, built once per test session."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {task: checkpoints.build(root / task, task) for task in TASKS}


@pytest.fixture(scope="session")
def head_dim_32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT embedding checkpoint whose heads the packed attention kernel takes (head size 32)."""
    path = tmp_path_factory.mktemp("head-dim-32")
    config = transformers.BertConfig(
        vocab_size=len(checkpoints.VOCAB),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(path), safe_serialization=True)
    checkpoints.write_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The bundled all-MiniLM-L6-v2 directory."""
    return bundled_model_path()


@pytest.fixture(scope="session")
def minilm_server() -> Iterator[ServerThread]:
    """`bertmesh serve` defaults (bundled MiniLM) with metrics on, shared by the session."""
    server = ServerThread(config_for(None, metrics=True)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["packed", "transformers"])
def tiny_servers(tiny_models: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[dict[str, ServerThread]]:
    """A server per tiny checkpoint, for each engine: every test using them checks both engines."""
    engine = ["--engine", request.param]
    servers = {
        task: ServerThread(config_for(path, *engine, metrics=True)).start() for task, path in tiny_models.items()
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def minilm_client(minilm_server: ServerThread) -> Iterator[BertmeshClient]:
    """A blocking client of the MiniLM server."""
    with BertmeshClient(minilm_server.target) as client:
        yield client
