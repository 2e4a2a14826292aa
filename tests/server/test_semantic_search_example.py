"""examples/semantic-search/search.py, run as a user runs it, against a real server (the bundled MiniLM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.server.harness import ServerThread

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "semantic-search" / "search.py"
# Obvious queries and the passage each must find first.
EXPECTED = {
    "how do plants make food from sunlight": "Photosynthesis",
    "what is the highest mountain in the world": "Mount Everest",
    "which programming language is known for readable syntax": "Python is",
}


def test_the_script_retrieves_then_reranks_the_obvious_passage_first(minilm_server: ServerThread) -> None:
    argv = [sys.executable, str(SCRIPT), "--target", minilm_server.target, "--top-k", "8", "--top-n", "3"]
    done = subprocess.run([*argv, "--format", "json", *EXPECTED], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["indexed"] == 50 and report["index_ms"] > 0
    for answer in report["answers"]:
        hits = answer["hits"]
        assert answer["method"] == "cosine" and len(hits) == 3
        assert hits[0]["passage"].startswith(EXPECTED[answer["query"]]), hits
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        # Reranked by the same model's cosine: each score is the passage's retrieval cosine.
        assert all(abs(h["score"] - h["cosine"]) < 1e-4 for h in hits)
    text = subprocess.run([*argv[:4], "tips for making coffee"], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "indexed 50 passages" in text.stdout and "rerank by cosine" in text.stdout
