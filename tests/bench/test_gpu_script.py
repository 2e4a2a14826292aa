"""bench/gpu.py runs end to end (on CPU, a tiny model), so a lent GPU's scarce minutes are not lost to a bug.
No timing assertions: only that it measures, counts and writes what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench.gpu import compositions, nominal_peak, options_from
from bench.gpu_models import make_checkpoint
from tests.distributions import dependency_closure

ROOT = Path(__file__).resolve().parents[2]


def _bench(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", "gpu", *argv], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


def test_the_checkpoint_is_loadable_bert_with_the_bundled_tokenizer(tmp_path: Path) -> None:
    shape = make_checkpoint(tmp_path, "tiny")
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (64, 2, 30522)
    assert shape.params == (4 * 64 * 64 + 2 * 64 * 128) * 2
    assert nominal_peak("NVIDIA H200") == nominal_peak("NVIDIA H100 80GB HBM3") == 989.4e12  # SXM parts
    assert nominal_peak("NVIDIA H100 PCIe") == 756e12 and nominal_peak("NVIDIA H100 NVL") is None
    pooling = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 64 and (tmp_path / "modules.json").is_file()


def test_minilm_is_the_bundled_shape(tmp_path: Path) -> None:
    shape = make_checkpoint(tmp_path, "minilm")
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], shape.layers) == (384, 6, 6)


def test_arguments_choose_the_parts_models_and_engine() -> None:
    base: dict[str, Any] = {"out": None, "dry_run": False, "device": "cuda", "precisions": "fp16,bf16", "tiny": False}
    base |= {"models": "minilm,bert-base", "parts": "engine,serve", "seconds": 20.0, "serve_seconds": 15.0}
    base |= {"clients": 8, "model_files": "/carry/minilm", "engine": "auto"}
    options = options_from(base)
    assert options.models == ("minilm", "bert-base") and options.parts == ("engine", "serve")
    assert options.precisions == ("fp16", "bf16") and options.files == Path("/carry/minilm")
    dry = options_from(base | {"dry_run": True})
    assert dry.device == "cpu" and dry.models == ("tiny",) and dry.engine == "cuda" and len(dry.parts) == 4
    assert dry.files == Path("/carry/minilm")  # the GPU image has no bundled model to fall back on


def test_first_pass_batches_are_distinct_and_within_budget() -> None:
    lengths = [10 + i % 50 for i in range(500)]
    batches = compositions(lengths, 64, max_tokens=300, max_inputs=16, seed=1)
    assert len({tuple(sorted(b)) for b in batches}) == 64
    assert all(sum(lengths[i] for i in b) <= 300 and len(b) <= 16 for b in batches)


def test_smoke_run_on_cpu_reports_throughput_and_utilisation(tmp_path: Path) -> None:
    argv = ["--device", "cpu", "--tiny", "--precisions", "fp32", "--seconds", "0.3", "--parts", "engine"]
    done = _bench(*argv, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(f"results in {tmp_path}")
    result = json.loads((tmp_path / "results.json").read_text())
    (row,) = result["rows"]
    assert row["precision"] == "fp32" and row["engine"] == "packed" and row["batches"] > 0
    assert row["tokens_per_s"] > 0 and row["mfu_measured_peak"] > 0
    assert row["mfu_nominal_peak"] is None and result["device"] == "cpu"


def test_a_failing_measurement_costs_its_row_not_the_run(tmp_path: Path) -> None:
    # bf16 needs CUDA: on CPU its in-process engine and its server fail for real, as a precision or a server could
    # on the GPU machine; the fp32 row after them is still measured, with the pipelining A/B next to it (the first
    # cuda row measured), and the failures are reported, not lost.
    argv = ["--device", "cpu", "--tiny", "--precisions", "bf16,fp32", "--seconds", "0.3", "--serve-seconds", "1"]
    done = _bench(*argv, "--engine", "cuda", "--parts", "engine,serve", "--out", str(tmp_path))
    assert done.returncode == 1, done.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert [(r["precision"], r["inflight_batches"]) for r in result["rows"]] == [("fp32", 1), ("fp32", 2)]
    assert "serve" not in result
    errors = result["errors"]
    assert [e["what"] for e in errors] == [
        "engine tiny bf16 kind=cuda",
        "serve tiny (inflight default)",
        "serve tiny (inflight 2)",
    ]
    assert all("--precision bf16 needs a CUDA device" in e["error"] for e in errors)
    summary = (tmp_path / "summary.md").read_text()
    assert "| engine | tiny | fp32 |" in summary and "**3 measurement(s) failed**" in summary
    assert "ConfigError" in done.stderr  # the traceback, for whoever reads the run's output


@pytest.mark.slow
def test_dry_run_goes_through_every_part_to_the_table(tmp_path: Path) -> None:
    done = _bench("--dry-run", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["rows"][0]["engine"] == "cuda"  # the CUDA engine's code path, eagerly on CPU
    # The pipelining A/B: the default (1 batch in flight on CPU), then the first model with 2.
    assert [r["inflight_batches"] for r in result["rows"]] == [1, 2]
    assert result["first_pass"]["batches"] == 64 and len(result["first_pass"]["tokens_per_s_by_pass"]) == 3
    serve = {(r["scenario"], r["inflight_batches"]): r for r in result["serve"]}
    assert set(serve) == {
        ("1-8 texts, c=64", None),
        ("1-8 texts, c=256", None),
        ("64 texts, c=16", None),
        ("1-8 texts, c=64", 2),
        ("64 texts, c=16", 2),
    }
    assert all(r["answers"] > 0 and r["client_processes"] == 8 for r in serve.values())
    peers = [r["peer"] for r in result["peers"]]
    assert any("batch 32" in p for p in peers) and any("batch 256" in p for p in peers) and len(peers) == 3
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("| serve |") == 5 and summary.count("| peer |") == 3 and "First pass" in summary
    assert "2 batches in flight" in summary and "--inflight-batches 2" in summary


def test_the_measure_script_brings_the_files_the_random_checkpoints_need(tmp_path: Path) -> None:
    script = ROOT / "hack" / "gpu-measure.sh"
    usage = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "hack/gpu-measure.sh run" in usage.stderr
    # the whole comment block, every subcommand in it, and none of the code below it
    header = script.read_text().split("\nset -euo pipefail")[0].splitlines()[1:]
    assert usage.stderr.splitlines() == [line.removeprefix("#").removeprefix(" ") for line in header]
    assert all(f"hack/gpu-measure.sh {command}" in usage.stderr for command in ("prepare", "emulate", "pins"))
    env = {**os.environ, "PY": sys.executable}
    done = subprocess.run([str(script), "files", str(tmp_path / "files")], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shape = make_checkpoint(tmp_path / "bert-base", "bert-base", files=tmp_path / "files")
    assert shape.hidden == 768 and (tmp_path / "bert-base" / "modules.json").is_file()
    assert (tmp_path / "bert-base" / "tokenizer.json").read_bytes() == (
        tmp_path / "files" / "tokenizer.json"
    ).read_bytes()


def _script(*argv: str) -> list[str]:
    done = subprocess.run([str(ROOT / "hack" / "gpu-measure.sh"), *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _with_dependencies(names: Iterable[str]) -> set[str]:
    """The distributions and all they install, as resolved here; one not installed here counts alone (its own
    requirements are unknown: psutil, in the image, is not in this venv, and it has none)."""
    named = set(names)
    installed = {name for name in named if _installed(name)}
    return named.union(*(dependency_closure(name, set()) for name in installed))


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _owners(files: set[Path]) -> set[str]:
    """The installed distributions these files belong to. A top-level package's `__init__.py` that several
    distributions share a folder under (google/, opentelemetry/) says nothing about which one was used."""
    owner: dict[Path, str] = {}
    sharing: dict[Path, set[str]] = {}
    for distribution in metadata.distributions():
        name = canonicalize_name(distribution.metadata["Name"])
        for file in distribution.files or []:
            path = Path(str(distribution.locate_file(file))).resolve()
            owner[path] = name
            if len(file.parts) > 1:
                sharing.setdefault(path.parents[len(file.parts) - 2], set()).add(name)
    return {
        owner[file]
        for file in files & owner.keys()
        if not (file.name == "__init__.py" and len(sharing.get(file.parent, ())) > 1)
    }


# Imported only where installed (grpc's optional protoc, uvicorn's reload supervisor, transformers' image
# utilities), so not needed; and the project itself, which the GPU machine runs from its source tree.
OPTIONAL = {"grpcio-tools", "watchfiles", "pillow", "bertmesh"}


def test_the_wheels_it_brings_cover_what_the_gpu_run_imports_beyond_the_image() -> None:
    # On the GPU machine, a package the run imports that is neither in its image nor brought is an ImportError
    # in a scarce device call (the HTTP front's fastapi was: `bertmesh serve` imports it at start).
    pins = _script("pins")
    assert all("==" in pin for pin in pins)  # the lock's versions, not whatever resolves there
    brought = {canonicalize_name(Requirement(pin).name) for pin in pins}
    image = _with_dependencies({canonicalize_name(Requirement(package).name) for package in _script("image")})
    modules = ["model_server.server", "model_server.http.front", "bertmesh_cli", "bench.gpu", "bench.gpu_serve"]
    modules += ["bench.gpu_peers", "bench.gpu_report", "tests.gpu.test_cuda_engine"]
    code = (
        "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
        "print(*{getattr(m, '__file__', None) for m in list(sys.modules.values())} - {None}, sep='\\n')"
    )
    done = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = _owners({Path(line).resolve() for line in done.stdout.splitlines()})
    assert {"fastapi", "grpcio", "torch"} <= imported  # the import list reaches the HTTP front, gRPC, the engine
    assert imported - image - brought - OPTIONAL == set()
    assert _with_dependencies(brought) - image - brought == set()  # each brought wheel's own requirements too
