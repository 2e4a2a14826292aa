"""examples/jobs/reindex-job.yaml: its script re-indexes a corpus through a real server with the client SDK, and
the Job speaks the operator's language (header pin, the reindexed-space annotation, the canary's space)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bertmesh_operator.rollout import REINDEXED_ANNOTATION
from bertmesh_operator.spec import HeaderPin
from model_server.client import BertmeshClient
from tests.server.harness import ServerThread, config_for

JOB = Path(__file__).resolve().parents[2] / "examples" / "jobs" / "reindex-job.yaml"
DOCUMENTS = [f"document number {i} about {topic}" for i, topic in enumerate(["cats", "ships", "tea"] * 5)]


def manifests() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(JOB.read_text())}


@pytest.fixture(scope="module")
def embedder(tiny_models: dict[str, Path]) -> Iterator[ServerThread]:
    # A small request limit, so the script's batches are split as the SDK is asked to.
    server = ServerThread(config_for(tiny_models["embedding"], "--max-inputs-per-request", "4")).start()
    yield server
    server.stop()


def test_the_script_writes_every_document_s_vector_through_the_sdk(embedder: ServerThread, tmp_path: Path) -> None:
    script = tmp_path / "reindex.py"
    script.write_text(manifests()["ConfigMap"]["data"]["reindex.py"])
    corpus = tmp_path / "documents.txt"
    corpus.write_text("\n".join(DOCUMENTS))
    env = os.environ | {
        "TARGET": embedder.target,
        "SPACE": "next",
        "DOCUMENTS": str(corpus),
        "INDEX_DIR": str(tmp_path),
    }
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = np.concatenate([np.load(path) for path in sorted((tmp_path / "next").glob("*.npy"))])
    with BertmeshClient(embedder.target) as client:
        expected = np.concatenate([client.embed(DOCUMENTS[i : i + 4]) for i in range(0, len(DOCUMENTS), 4)])
    np.testing.assert_allclose(written, expected, atol=1e-5)
    assert f"re-indexed {len(DOCUMENTS)} documents" in done.stdout


def test_the_job_pins_the_canary_and_declares_the_canary_s_space() -> None:
    job = manifests()["Job"]["spec"]["template"]["spec"]
    script = manifests()["ConfigMap"]["data"]["reindex.py"]
    pin = HeaderPin()
    assert f'"PIN_HEADER", "{pin.name}"' in script and f'"PIN_VALUE", "{pin.value}"' in script
    (reindex,) = job["initContainers"]
    space = next(e["value"] for e in reindex["env"] if e["name"] == "SPACE")
    (declare,) = job["containers"]
    assert f"{REINDEXED_ANNOTATION}={space}" in declare["args"]
