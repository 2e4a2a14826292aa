"""`bertmesh bench --report`: a real, short capacity run on tiny checkpoints (fp32 and int8 in child processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_server.capacity import fidelity, measurement_steps, recommend
from model_server.capacity_workload import measurement, request_plan
from model_server.errors import Overloaded
from model_server.loadgen.drivers import TIMEOUT, Window


@pytest.mark.parametrize("task", ["embedding", "sequence-classification", "rerank"])
def test_capacity_report_measures_every_precision(tiny_models: dict[str, Path], tmp_path: Path, task: str) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertmesh_cli",
            "bench",
            "--report",
            "--out",
            str(out),
            "--model",
            str(tiny_models[task]),
            "--seconds",
            "0.6",
            "--target-rps",
            "40",
            "--target-p99-ms",
            "2000",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert [r["precision"] for r in results] == ["fp32", "int8"]
    for r in results:
        assert r["capacity"]["rps"] > 0 and r["unloaded"]["p99_ms"] > 0
        assert len(r["loaded"]) == 4 and all(m["offered_rps"] > 0 for m in r["loaded"])
        assert r["max_batch_tokens"] in (512, 1024, 2048, 4096)
        assert r["memory_mib"] > 0
        assert r["recommendation"]["replicas"] >= 1
    fidelity = results[1]["fidelity"]
    if task == "embedding":
        assert 0.9 <= fidelity["cosine_min"] <= fidelity["cosine_mean"] <= 1.0
    elif task == "rerank":
        assert 0.0 <= fidelity["score_max_abs_diff"] < 0.1 and "relevance max |diff|" in (out / "report.md").read_text()
    else:
        assert 0.0 <= fidelity["agreement"] <= 1.0
    report = (out / "report.md").read_text()
    assert report.startswith(f"# Capacity report: {task} ({task}) on cpu")
    assert "Recommended: `--precision" in report and report in done.stdout
    assert (out / "latency_vs_load.png").stat().st_size > 1000
    # Each measurement is announced as it starts, so a two-minute run is never silent.
    steps = measurement_steps("cpu", 0.6)
    for precision in ("fp32", "int8"):
        shown = [line for line in done.stderr.splitlines() if line.startswith(f"bertmesh bench: {precision} [")]
        assert [line.split("] ", 1)[1] for line in shown] == [
            f"{what} ({length:g} s)" if length else what for what, length in steps
        ]
        assert shown[-1].startswith(f"bertmesh bench: {precision} [{len(steps)}/{len(steps)}] outputs of")


def test_recommend_picks_the_highest_load_meeting_the_p99_and_rounds_replicas_up() -> None:
    result = {
        "capacity": {"rps": 100.0},
        "unloaded": {"p99_ms": 20.0},
        "loaded": [
            {"offered_rps": 25.0, "p99_ms": 30.0, "shed": 0, "timed_out": 0},
            {"offered_rps": 50.0, "p99_ms": 45.0, "shed": 0, "timed_out": 0},
            {"offered_rps": 75.0, "p99_ms": 90.0, "shed": 0, "timed_out": 0},  # misses a 50 ms target
            {"offered_rps": 90.0, "p99_ms": 40.0, "shed": 3, "timed_out": 0},  # shed requests never count as meeting it
            {"offered_rps": 95.0, "p99_ms": 40.0, "shed": 0, "timed_out": 1},  # nor do requests that never returned
        ],
    }
    rec = recommend(result, target_rps=120.0, target_p99_ms=50.0)
    assert rec["replicas"] == 3 and rec["per_replica_rps"] == 50.0 and rec["load_fraction"] == 0.5
    unmet = recommend(result, target_rps=120.0, target_p99_ms=10.0)
    assert unmet["replicas"] is None and "10 ms is not met" in unmet["why"]


def test_fidelity_is_cosine_for_embeddings_and_agreement_for_labels() -> None:
    same = fidelity("embedding", [[1.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [0.0, 1.0]])
    assert same == {"cosine_min": 1.0, "cosine_mean": 1.0}
    turned = fidelity("embedding", [[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]])
    assert turned == {"cosine_min": 0.0, "cosine_mean": 0.5}
    assert fidelity("classification", ["a", "b", "c", "d"], ["a", "b", "x", "d"]) == {"agreement": 0.75}


def _window(latencies_ms: list[float], failures: dict[str, int]) -> Window[list[str]]:
    window: Window[list[str]] = Window(2.0)
    for ms in latencies_ms:
        window.record(["a text"], ms / 1000)
    for kind, count in failures.items():
        window.fail(kind, f"{kind}: detail", count)
    return window


def test_measurement_reads_overloaded_as_shed_and_counts_timeouts() -> None:
    m = measurement(_window([10.0, 20.0, 30.0, 40.0], {Overloaded.__name__: 2, TIMEOUT: 1}), 5.0)
    assert (m.offered_rps, m.rps, m.shed, m.timed_out) == (5.0, 2.0, 2, 1)
    assert m.p50_ms == pytest.approx(25.0) and m.p99_ms == pytest.approx(39.7)


def test_measurement_refuses_a_window_with_any_other_failure() -> None:
    with pytest.raises(RuntimeError, match="ValueError"):
        measurement(_window([10.0], {Overloaded.__name__: 1, "ValueError": 1}), None)


def test_request_plans_are_seeded_with_distinct_texts_per_request() -> None:
    texts = [f"text {i}" for i in range(10)]
    plan = request_plan(texts, 4, seed=3)
    assert plan == request_plan(texts, 4, seed=3) and plan != request_plan(texts, 4, seed=4)
    assert all(len(set(r)) == 4 and set(r) <= set(texts) for r in plan)
    assert {len(r) for r in request_plan(texts[:2], 4, seed=3)} == {2}
