"""The real istioctl, offline: `validate` checks each Istio object, `analyze` checks them together."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tests.e2e.manifests import Manifests, as_path, write_yaml
from tests.e2e.processes import run_command

_CODE = re.compile(r"\[(IST\d{4})\]")


@dataclass(frozen=True)
class IstioctlResult:
    """What istioctl said: whether it passed, its exit status, its output, and the IST codes it reported."""

    ok: bool
    returncode: int
    output: str
    codes: tuple[str, ...]


class IstioValidate(Protocol):
    """The `istio_validate` fixture's type: Istioctl.validate."""

    def __call__(self, manifests: Manifests, *, check: bool = True) -> IstioctlResult: ...


class IstioAnalyze(Protocol):
    """The `istio_analyze` fixture's type: Istioctl.analyze."""

    def __call__(
        self, manifests: Manifests, *, check: bool = True, failure_threshold: str = "Error"
    ) -> IstioctlResult: ...


class IstioctlError(AssertionError):
    """istioctl rejected the objects; str() is the tool's own message, `result` the whole answer."""

    def __init__(self, command: str, result: IstioctlResult) -> None:
        super().__init__(f"istioctl {command} rejected the objects:\n{result.output}")
        self.result = result


class Istioctl:
    """Runs the pinned istioctl on objects or files without any cluster (it never reads a kubeconfig)."""

    def __init__(self, binary: Path, work_dir: Path) -> None:
        self.binary = binary
        self.work_dir = work_dir

    def validate(self, manifests: Manifests, *, check: bool = True) -> IstioctlResult:
        """`istioctl validate -f`: schema and semantic checks per object (durations, percentages, names).

        Route weights that do not sum to 100 pass (Istio weights are relative): check sums yourself.
        """
        return self._run("validate", ["validate"], manifests, check)

    def analyze(self, manifests: Manifests, *, check: bool = True, failure_threshold: str = "Error") -> IstioctlResult:
        """`istioctl analyze --use-kube=false -A`: objects checked against each other (e.g. IST0101, a route
        to a subset no DestinationRule defines); messages below `failure_threshold` do not fail it."""
        args = ["analyze", "--use-kube=false", "--all-namespaces", f"--failure-threshold={failure_threshold}"]
        return self._run("analyze", args, manifests, check)

    def _run(self, command: str, args: list[str], manifests: Manifests, check: bool) -> IstioctlResult:
        path = as_path(manifests)
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            if path is None or path.is_dir():  # one file: neither command walks directories the same way
                path = write_yaml(manifests, Path(tmp) / "objects.yaml")
            # analyze takes files as arguments; validate wants -f.
            files = ["-f", str(path)] if command == "validate" else [str(path)]
            env = dict(os.environ, KUBECONFIG=str(Path(tmp) / "no-kubeconfig"))
            proc = run_command([str(self.binary), *args, *files], check=False, env=env, timeout=60)
        output = "\n".join(s.strip() for s in (proc.stdout, proc.stderr) if s.strip())
        result = IstioctlResult(proc.returncode == 0, proc.returncode, output, tuple(_CODE.findall(output)))
        if check and not result.ok:
            raise IstioctlError(command, result)
        return result
