"""bench/gpu.py runs end to end (on CPU, a tiny model), so a lent GPU's scarce minutes are not lost to a bug.
No timing assertions: only that it measures, counts and writes what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.gpu import NOMINAL_BF16_PEAK, make_checkpoint


def test_the_checkpoint_is_loadable_bert_with_the_bundled_tokenizer(tmp_path: Path) -> None:
    shape = make_checkpoint(tmp_path, tiny=True)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (64, 2, 30522)
    assert shape.params == (4 * 64 * 64 + 2 * 64 * 128) * 2
    assert NOMINAL_BF16_PEAK["H200"] == 989.4e12


def test_smoke_run_on_cpu_reports_throughput_and_utilisation(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    argv = ["gpu", "--device", "cpu", "--tiny", "--precisions", "fp32", "--seconds", "0.3", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(f"results in {tmp_path}")
    result = json.loads((tmp_path / "results.json").read_text())
    (row,) = result["rows"]
    assert row["precision"] == "fp32" and row["engine"] == "packed" and row["batches"] > 0
    assert row["tokens_per_s"] > 0 and row["mfu_measured_peak"] > 0
    assert row["mfu_nominal_peak"] is None and result["device"] == "cpu"
