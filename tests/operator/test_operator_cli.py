"""`bertmesh operator` flags and `bertmesh rollout` output and refusals, without a cluster."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bertmesh_cli import main
from bertmesh_operator.commands.rollout import RolloutCommandError, command_for, format_status
from bertmesh_operator.commands.run import _QuietTicks, parse_args
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import Command, Observation, initial_state, step
from bertmesh_operator.states import Action, Phase
from bertmesh_operator.status import rollout_state, status_patch

MakeManifest = Callable[..., dict[str, Any]]
CANARY = {"model": {"storageUri": "pvc://models/v2", "revision": "v2"}, "steps": [10, 50], "threshold": 3}


def test_operator_defaults_are_what_the_chart_expects() -> None:
    config = parse_args([])
    assert config.namespaces == ()  # every namespace
    assert config.prometheus_url == "http://prometheus.istio-system.svc:9090"
    assert (config.health_host, config.health_port) == ("0.0.0.0", 8080)
    assert config.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert config.resync_seconds == 30
    assert config.autoscaler == "keda"
    assert not config.verbose


def test_operator_flags() -> None:
    config = parse_args(
        [
            "--namespace=a",
            "--namespace=b",
            "--namespace=a",
            "--prometheus-url=http://p:9090",
            "--health-host=::",
            "--health-port=9000",
            "--resync-seconds=5",
            "--autoscaler=hpa",
            "--verbose",
        ]
    )
    assert config.autoscaler == "hpa"
    assert config.namespaces == ("a", "b")
    assert config.liveness_endpoint == "http://[::]:9000/healthz"
    assert (config.prometheus_url, config.resync_seconds, config.verbose) == ("http://p:9090", 5.0, True)
    assert parse_args(["--all-namespaces"]).namespaces == ()


@pytest.mark.parametrize(
    "argv",
    [
        ["--namespace=a", "--all-namespaces"],
        ["--resync-seconds=0"],
        ["--health-port=0"],
        ["--workers=0"],
        ["--autoscaler=adapter"],
    ],
)
def test_operator_refuses_bad_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2


def _reconciled(manifest: dict[str, Any], t0: datetime, *, ready: bool = True) -> dict[str, Any]:
    """The manifest with the status the operator writes after the canary became ready."""
    md = parse_model_deployment(manifest)
    state = step(initial_state(md.spec), None, md.spec, t0)
    if ready:
        state = step(state, Observation(canary_ready_replicas=1), md.spec, t0)
    manifest["metadata"]["generation"] = 2
    manifest["status"] = status_patch(
        state,
        md.spec,
        generation=2,
        stable_ready_replicas=3,
        canary_ready_replicas=1,
        grpc_endpoint="minilm.ml.svc.cluster.local:50051",
        now=t0,
    )
    return manifest


def test_rollout_status_says_phase_weights_step_checks_revisions_and_conditions(
    make_md: MakeManifest, t0: datetime
) -> None:
    md = _reconciled(make_md({"traffic": {"canary": CANARY}}), t0)
    text = format_status(md, now=t0 + timedelta(minutes=3))
    assert "ModelDeployment ml/minilm (generation 2, observed 2)" in text
    assert "Phase:         Progressing" in text
    assert "Weights:       stable 90%, canary 10%" in text
    assert "Step:          1/2" in text
    assert "Failed checks: 0/3" in text
    assert f"Canary:        v2 (revision {md['status']['canary']['revision']}), 1 ready" in text
    assert "Stable:        pvc://models/minilm" in text
    assert "Endpoint:      minilm.ml.svc.cluster.local:50051" in text
    lines = text.splitlines()
    header = lines.index("Conditions:") + 1
    assert lines[header].split() == ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
    assert lines[header + 2].split()[:4] == ["Progressing", "True", "CanaryReady", "3m"]


def test_rollout_status_of_a_new_model_deployment(make_md: MakeManifest) -> None:
    text = format_status(make_md())
    assert "Phase:         not reconciled yet" in text
    assert "Canary:        -" in text


def test_promote_and_abort_bind_to_the_canary_revision(make_md: MakeManifest, t0: datetime) -> None:
    md = _reconciled(make_md({"traffic": {"canary": CANARY}}), t0)
    revision = md["status"]["canary"]["revision"]
    assert command_for(md, "abort").annotation() == f"abort:{revision}"
    assert command_for(md, "promote").annotation() == f"promote:{revision}"


@pytest.mark.parametrize(
    ("phase", "action", "message"),
    [
        ("Aborted", "abort", "already aborted"),
        ("Promoting", "abort", "already being promoted"),
        ("Promoting", "promote", "already being promoted"),
    ],
)
def test_commands_that_cannot_apply_say_why(
    make_md: MakeManifest, t0: datetime, phase: str, action: Any, message: str
) -> None:
    md = _reconciled(make_md({"traffic": {"canary": CANARY}}), t0)
    md["status"]["phase"] = phase
    with pytest.raises(RolloutCommandError, match=message):
        command_for(md, action)


@pytest.mark.parametrize("action", ["promote", "abort"])
@pytest.mark.parametrize("phase", [Phase.PROGRESSING, Phase.PROMOTING, Phase.ABORTED])  # with a canary
def test_the_cli_refuses_exactly_the_commands_the_operator_would_ignore(
    make_md: MakeManifest, t0: datetime, phase: Phase, action: Action
) -> None:
    md = _reconciled(make_md({"traffic": {"canary": CANARY}}), t0)
    spec = parse_model_deployment(md).spec
    revision = md["status"]["canary"]["revision"]
    state = replace(rollout_state(parse_model_deployment(md).status, spec), phase=phase)
    acted = step(state, None, spec, t0, Command(action, revision)) != step(state, None, spec, t0)
    md["status"]["phase"] = phase.value
    try:
        command_for(md, action)
        accepted = True
    except RolloutCommandError:
        accepted = False
    assert accepted == acted


def test_there_is_nothing_to_promote_without_a_rollout(make_md: MakeManifest, t0: datetime) -> None:
    md = _reconciled(make_md(), t0, ready=False)
    with pytest.raises(RolloutCommandError, match=r"no rollout in progress for ml/minilm \(phase Stable\)"):
        command_for(md, "promote")


def test_rollout_without_credentials_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert main(["rollout", "status", "minilm"]) == 1
    assert f"no Kubernetes credentials: file not found: {tmp_path / 'missing'}" in capsys.readouterr().err
    assert main(["rollout", "status", "minilm", "--kubeconfig", "/missing"]) == 1
    assert capsys.readouterr().err == "bertmesh rollout: no Kubernetes credentials: file not found: /missing\n"


def test_the_operator_imports_and_starts_without_torch(tmp_path: Path) -> None:
    """`bertmesh operator --help` in a fresh interpreter where importing torch fails."""
    blocker = tmp_path / "torch.py"
    blocker.write_text("raise ImportError('torch must not be imported by the operator')\n")
    for argv in (["operator", "--help"], ["rollout", "--help"]):
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from bertmesh_cli import main; sys.exit(main(sys.argv[1:]))",
                *argv,
            ],
            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "--prometheus-url" in result.stdout or "promote" in result.stdout
    code = (
        "import importlib, pkgutil, sys, bertmesh_operator\n"
        "for module in pkgutil.walk_packages(bertmesh_operator.__path__, 'bertmesh_operator.'):\n"
        "    importlib.import_module(module.name)\n"
        "assert 'bertmesh_operator.handlers' in sys.modules and 'bertmesh_operator.commands.run' in sys.modules\n"
        "assert 'torch' not in sys.modules and 'model_server' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_routine_kopf_lines_are_dropped_and_the_rest_kept() -> None:
    quiet = _QuietTicks("children", "pods", "modeldeployments")
    kept = {
        message: quiet.filter(logging.makeLogRecord({"msg": message}))
        for message in (
            "Timer 'recheck' succeeded.",
            "Timer 'rollout' succeeded.",
            "Handler 'children' succeeded.",
            "Handler 'pods' succeeded.",
            "Handler 'modeldeployments' succeeded.",
            "Handler 'modeldeployments' failed with an exception. Will retry.",
            "Timer 'rollout' failed temporarily: Prometheus at http://p is unreachable",
        )
    }
    assert [message for message, keep in kept.items() if keep] == [
        "Handler 'modeldeployments' failed with an exception. Will retry.",
        "Timer 'rollout' failed temporarily: Prometheus at http://p is unreachable",
    ]
