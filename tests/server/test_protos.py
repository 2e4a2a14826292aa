"""The committed generated code is what protos/ generates today (run `make protos` when this fails)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "hack" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = tmp_path / "proto"
    gen.generate(fresh)
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "ruff", "format", "--quiet", str(fresh)], check=True)
    committed = ROOT / "model_server" / "proto"
    fresh_files = {p.relative_to(fresh): p.read_text() for p in fresh.rglob("*") if p.is_file()}
    committed_files = {
        p.relative_to(committed): p.read_text()
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(fresh_files) == sorted(committed_files)
    stale = [str(name) for name, text in fresh_files.items() if committed_files[name] != text]
    assert not stale, f"stale generated files (run `make protos`): {stale}"
