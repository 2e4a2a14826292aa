"""Kubernetes objects as tests hold them (dicts, lists, files) turned into what the CLI tools read."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import yaml

# A path (str or Path) to a YAML file or a directory of them, one object, or an iterable of objects.
Manifests: TypeAlias = str | os.PathLike[str] | Mapping[str, Any] | Iterable[Mapping[str, Any]]


def as_path(manifests: Manifests) -> Path | None:
    """The path when `manifests` names a file or directory, else None (it holds objects)."""
    if isinstance(manifests, (str, os.PathLike)):
        return Path(manifests)
    return None


def as_objects(manifests: Manifests) -> list[dict[str, Any]]:
    """The objects `manifests` holds or names, in order (YAML files are read, empty documents dropped)."""
    if isinstance(manifests, (str, os.PathLike)):
        path = Path(manifests)
        files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
        return [doc for f in files for doc in yaml.safe_load_all(f.read_text()) if doc]
    if isinstance(manifests, Mapping):
        return [dict(manifests)]
    return [dict(obj) for obj in manifests]


def to_yaml(manifests: Manifests) -> str:
    """One multi-document YAML stream of the objects."""
    return yaml.safe_dump_all(as_objects(manifests), sort_keys=False)


def write_yaml(manifests: Manifests, path: Path) -> Path:
    """Write the objects to `path` as multi-document YAML and return the path."""
    path.write_text(to_yaml(manifests))
    return path
