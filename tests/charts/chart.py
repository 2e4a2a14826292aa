"""The bertmesh chart as tests use it: the real helm binary rendering it into plain objects."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bertmesh_operator.permissions import CLUSTER_RULES, RULES

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bertmesh"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "bertmesh"
RELEASE_NAMESPACE = "bertmesh-system"

Obj = dict[str, Any]
# (namespace or "" for cluster-wide, API group, resource, verb)
Grant = tuple[str, str, str, str]


@dataclass(frozen=True)
class Helm:
    """The pinned helm binary, with its caches and config kept out of $HOME."""

    binary: Path
    home: Path

    def env(self) -> dict[str, str]:
        """Environment for helm: no kubeconfig needed for template/lint; state under `home`."""
        env = dict(os.environ)
        env.update(
            HELM_CACHE_HOME=str(self.home / "cache"),
            HELM_CONFIG_HOME=str(self.home / "config"),
            HELM_DATA_HOME=str(self.home / "data"),
        )
        return env

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run helm; raise AssertionError with its stderr when `check` and it fails."""
        proc = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=self.env(), timeout=120, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def template_text(
        self,
        values_files: Sequence[Path] = (),
        values: Mapping[str, Any] | None = None,
        *,
        extra: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`helm template` of the chart as release bertmesh in bertmesh-system, values given as files or a dict."""
        args = ["template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *extra]
        for path in values_files:
            args += ["--values", str(path)]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=self.home) as override:
            if values:
                yaml.safe_dump(dict(values), override)
                override.flush()
                args += ["--values", override.name]
            return self.run(*args, check=check)

    def template(
        self,
        values_files: Sequence[Path] = (),
        values: Mapping[str, Any] | None = None,
        *,
        extra: Sequence[str] = (),
    ) -> list[Obj]:
        """The rendered objects, in helm's order (the `helm test` pod included)."""
        text = self.template_text(values_files, values, extra=extra).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(objects: Iterable[Obj], kind: str) -> list[Obj]:
    """The objects of one kind."""
    return [o for o in objects if o["kind"] == kind]


def one(objects: Iterable[Obj], kind: str) -> Obj:
    """The single object of a kind (fails when there are none or several)."""
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def values_of(path: Path) -> Obj:
    """A values file as a dict."""
    loaded: Obj = yaml.safe_load(path.read_text()) or {}
    return loaded


def schema() -> Obj:
    """values.schema.json."""
    loaded: Obj = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def expected_grants(namespaces: Iterable[str]) -> set[Grant]:
    """What permissions.RULES grants the operator in each of `namespaces` ("" meaning cluster-wide, where
    CLUSTER_RULES are granted too)."""
    return {
        (namespace, rule.api_group, resource, verb)
        for namespace in namespaces
        for rule in (RULES + CLUSTER_RULES if namespace == "" else RULES)
        for resource in rule.resources
        for verb in rule.verbs
    }


def operator_grants(objects: Sequence[Obj], service_account: str, sa_namespace: str) -> set[Grant]:
    """Every (namespace, group, resource, verb) the chart's bindings give the operator's ServiceAccount."""
    roles = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects}
    grants: set[Grant] = set()
    for binding in objects:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        subject = {"kind": "ServiceAccount", "name": service_account, "namespace": sa_namespace}
        if subject not in binding["subjects"]:
            continue
        scope = binding["metadata"].get("namespace", "")
        ref = binding["roleRef"]
        role = roles[(ref["kind"], "" if ref["kind"] == "ClusterRole" else scope, ref["name"])]
        for rule in role["rules"]:
            grants |= {
                (scope, group, resource, verb)
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
            }
    return grants
