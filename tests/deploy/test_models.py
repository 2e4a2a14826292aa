"""deploy/models/minilm-pvc.yaml: valid objects, and its copy script really produces the served model directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bertmesh_operator.render.deployment import SERVER_UID

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "models" / "minilm-pvc.yaml"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cpu-embedding.yaml"


def objects() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc}


@pytest.mark.parametrize("version", ["1.33", "1.37"])
def test_objects_pass_kubernetes_validate_strict(version: str) -> None:
    for obj in objects().values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_it_fills_the_claim_the_cpu_example_mounts() -> None:
    claim = objects()["PersistentVolumeClaim"]["metadata"]["name"]
    example = yaml.safe_load(EXAMPLE.read_text())
    assert example["spec"]["model"]["storageUri"] == f"pvc://{claim}/all-MiniLM-L6-v2"
    pod = objects()["Job"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    assert pod["securityContext"]["runAsUser"] == SERVER_UID == pod["securityContext"]["fsGroup"]


def test_the_copy_script_writes_a_model_directory(tmp_path: Path) -> None:
    (container,) = objects()["Job"]["spec"]["template"]["spec"]["containers"]
    script = container["args"][0].replace('"/models/', f'"{tmp_path}/')
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    model = tmp_path / "all-MiniLM-L6-v2"
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in model.iterdir()}
