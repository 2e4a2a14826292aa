"""The ModelDeployment examples under examples/, its subfolders included; other manifests there (the
re-index Job and its ServiceAccount) are not ModelDeployments and are tested on their own."""

from __future__ import annotations

from pathlib import Path

import yaml

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples"


def model_deployment_examples() -> list[Path]:
    """Every examples/**/*.yaml whose documents are all ModelDeployments, sorted."""
    return [
        path
        for path in sorted(EXAMPLE_DIR.glob("**/*.yaml"))
        if all(doc.get("kind") == "ModelDeployment" for doc in yaml.safe_load_all(path.read_text()) if doc)
    ]
