"""Shared fixtures for operator tests: ModelDeployment manifests as plain dicts, as users write them.

Helpers that are classes rather than fixtures live in `tests.operator.fakes` (imported by that name: the
package is `tests.operator`, never a top-level `operator`, which would shadow the standard library).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

Manifest = dict[str, Any]
MakeManifest = Callable[..., Manifest]
REPO = Path(__file__).resolve().parents[2]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _manifest(spec: dict[str, Any] | None = None, name: str = "minilm", namespace: str = "ml") -> Manifest:
    base: dict[str, Any] = {"model": {"storageUri": "pvc://models/minilm"}}
    return {
        "apiVersion": "serving.bertmesh.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": _merge(base, spec or {}),
    }


@pytest.fixture
def make_md() -> MakeManifest:
    """Build a manifest: `make_md({"resources": {"gpus": 1}})` merges over a minimal valid spec."""
    return _manifest


@pytest.fixture
def t0() -> datetime:
    """A fixed, timezone-aware start time."""
    return datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def repo() -> Path:
    """The repository root."""
    return REPO
