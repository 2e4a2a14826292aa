"""`bertmesh render|operator|rollout`: offline output, clear errors, honest placeholders."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bertmesh_cli import main
from bertmesh_operator.render import render
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Observation, initial_state, step
from bertmesh_operator.status import rollout_status

MakeManifest = Callable[..., dict[str, Any]]


def write(tmp_path: Path, *docs: Any) -> Path:
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_render_prints_every_object_as_yaml(
    tmp_path: Path, make_md: MakeManifest, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = make_md()
    assert main(["render", "-f", str(write(tmp_path, manifest))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("---\n")
    assert list(yaml.safe_load_all(out)) == render(manifest)


def test_render_json_is_a_list(tmp_path: Path, make_md: MakeManifest, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(write(tmp_path, make_md())), "-o", "json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert (listing["apiVersion"], listing["kind"]) == ("v1", "List")
    assert [o["kind"] for o in listing["items"]][:3] == ["ServiceAccount", "Service", "Deployment"]


def test_render_reads_several_documents_from_stdin(
    make_md: MakeManifest, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = yaml.safe_dump_all([make_md(name="one"), None, make_md(name="two")])
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert main(["render", "-f", "-"]) == 0
    names = {o["metadata"]["name"] for o in yaml.safe_load_all(capsys.readouterr().out)}
    assert {"one", "two", "one-stable", "two-stable"} <= names


def test_render_follows_the_status_like_the_operator(
    tmp_path: Path, make_md: MakeManifest, capsys: pytest.CaptureFixture[str], t0: Any
) -> None:
    manifest = make_md({"traffic": {"canary": {"model": {"storageUri": "pvc://m/v2"}, "steps": [30, 60]}}})
    spec = parse_model_deployment(manifest).spec
    state = step(initial_state(spec), None, spec, t0)
    state = step(state, Observation(canary_ready_replicas=1), spec, t0)
    manifest["status"] = rollout_status(state, spec, stable_ready_replicas=2, canary_ready_replicas=1)
    assert main(["render", "-f", str(write(tmp_path, manifest))]) == 0
    vs = next(o for o in yaml.safe_load_all(capsys.readouterr().out) if o["kind"] == "VirtualService")
    assert [r["weight"] for r in vs["spec"]["http"][1]["route"]] == [70, 30]


def test_render_options(tmp_path: Path, make_md: MakeManifest, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, make_md())
    assert main(["render", "-f", str(path), "--cluster-domain", "corp", "--trust-domain", "td"]) == 0
    vs = next(o for o in yaml.safe_load_all(capsys.readouterr().out) if o["kind"] == "VirtualService")
    assert vs["spec"]["hosts"] == ["minilm.ml.svc.corp"]


def test_render_autoscaler_flags(tmp_path: Path, make_md: MakeManifest, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, make_md())
    assert main(["render", "-f", str(path), "--prometheus-url", "http://prom:9090"]) == 0
    kinds = {o["kind"]: o for o in yaml.safe_load_all(capsys.readouterr().out)}
    assert kinds["ScaledObject"]["spec"]["triggers"][0]["metadata"]["serverAddress"] == "http://prom:9090"
    assert "HorizontalPodAutoscaler" not in kinds
    assert main(["render", "-f", str(path), "--autoscaler", "hpa"]) == 0
    kinds = {o["kind"]: o for o in yaml.safe_load_all(capsys.readouterr().out)}
    assert "HorizontalPodAutoscaler" in kinds and "ScaledObject" not in kinds


def test_invalid_spec_names_document_and_fields(
    tmp_path: Path, make_md: MakeManifest, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = make_md({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}, "resources": {"memory": "lots"}})
    path = write(tmp_path, make_md(name="good"), bad)
    assert main(["render", "-f", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing half-rendered
    assert "document 2: ModelDeployment 'minilm' is invalid" in captured.err
    assert "spec.autoscaling: minReplicas must not exceed maxReplicas" in captured.err
    assert "spec.resources.memory: must be a positive Kubernetes quantity" in captured.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "expected apiVersion serving.bertmesh.io"),
        ("model: [unclosed\n", "not valid YAML"),
        ("", "no ModelDeployment found"),
        ("- a list\n", "not a mapping"),
    ],
)
def test_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str) -> None:
    path = tmp_path / "in.yaml"
    path.write_text(content)
    assert main(["render", "-f", str(path)]) == 1
    assert message in capsys.readouterr().err


def test_namespace_places_what_names_none_as_kubectl_apply_does(
    tmp_path: Path, make_md: MakeManifest, capsys: pytest.CaptureFixture[str]
) -> None:
    unplaced = make_md()
    unplaced["metadata"].pop("namespace", None)
    assert main(["render", "-n", "search", "-f", str(write(tmp_path, unplaced)), "-o", "json"]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    placed = {**unplaced, "metadata": {**unplaced["metadata"], "namespace": "search"}}
    assert items == render(placed)
    assert {o["metadata"].get("namespace") for o in items} == {"search"}


def test_a_namespace_that_disagrees_with_the_documents_own_is_refused(
    tmp_path: Path, make_md: MakeManifest, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = make_md()
    manifest["metadata"]["namespace"] = "ml"
    path = str(write(tmp_path, manifest))
    assert main(["render", "--namespace", "ml", "-f", path]) == 0
    capsys.readouterr()
    assert main(["render", "--namespace", "search", "-f", path]) == 1
    assert "document 1: its namespace 'ml' does not match --namespace 'search'" in capsys.readouterr().err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["bogus"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["render"])  # -f is required
    assert exit_info.value.code == 2


def test_the_bertmesh_command_dispatches_here(repo: Path) -> None:
    example = repo / "examples" / "cpu-embedding.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "bertmesh_cli", "render", "-f", str(example), "-o", "json"],
        capture_output=True,
        text=True,
        cwd=repo,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "List"
