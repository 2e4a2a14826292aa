"""Contracts between the operator and its neighbours: RBAC covers every rendered kind, and the server accepts
every argument list the operator renders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bertmesh_operator.permissions import CHILD_RESOURCES, RULES
from bertmesh_operator.render import render
from model_server.config import parse_args
from tests.example_files import model_deployment_examples

EXAMPLES = model_deployment_examples()


def objects(path: Path) -> list[dict[str, Any]]:
    return [obj for doc in yaml.safe_load_all(path.read_text()) if doc for obj in render(doc)]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_rendered_kind_has_an_rbac_rule(path: Path) -> None:
    granted = {(rule.api_group, resource) for rule in RULES for resource in rule.resources}
    for obj in objects(path):
        key = (obj["apiVersion"], obj["kind"])
        assert key in CHILD_RESOURCES, f"{key} is rendered but not in permissions.CHILD_RESOURCES"
        assert CHILD_RESOURCES[key] in granted


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_server_accepts_the_rendered_arguments(path: Path) -> None:
    for obj in objects(path):
        if obj["kind"] != "Deployment":
            continue
        container = obj["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["bertmesh", "serve"]
        config = parse_args(container["args"])  # exits (SystemExit) on any flag the server does not know
        assert (config.host, config.port, config.metrics_port) == ("0.0.0.0", 50051, 9400)
        assert str(config.model.path).startswith("/mnt/models")
