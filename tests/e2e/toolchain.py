"""Finds the binaries hack/k8s-toolchain.sh builds, and says what to do when they are missing."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLCHAIN_SCRIPT = REPO_ROOT / "hack" / "k8s-toolchain.sh"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
    "helm",
    "istioctl",
    "prometheus",
)
# Set to 1 by CI (.ci/run): a missing toolchain fails the e2e tier instead of skipping it.
REQUIRE_ENV = "BERTMESH_REQUIRE_E2E"
# Points the tests at a bin directory other than the one hack/k8s-toolchain.sh --print-dir names.
BIN_ENV = "BERTMESH_K8S_BIN"


class ToolchainMissingError(RuntimeError):
    """The e2e toolchain is not built (or is incomplete); the message says how to build it."""


@dataclass(frozen=True)
class Toolchain:
    """The built control-plane binaries and the Istio assets that come with them."""

    bin_dir: Path

    def bin(self, name: str) -> Path:
        """Path of one binary, e.g. `bin("kubectl")`."""
        return self.bin_dir / name

    @property
    def share_dir(self) -> Path:
        """Data files beside bin/: `istio/crd-all.gen.yaml`, `istio/charts/base`."""
        return self.bin_dir.parent / "share"

    @property
    def istio_crds(self) -> Path:
        """Istio's CRDs (every *.istio.io kind) as one multi-document YAML file."""
        return self.share_dir / "istio" / "crd-all.gen.yaml"

    @property
    def istio_base_chart(self) -> Path:
        """Istio's official `base` Helm chart (its CRDs and cluster-wide RBAC)."""
        return self.share_dir / "istio" / "charts" / "base"


def _default_bin_dir() -> Path:
    out = subprocess.run(["bash", str(TOOLCHAIN_SCRIPT), "--print-dir"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def find_toolchain() -> Toolchain:
    """Locate a complete toolchain ($BERTMESH_K8S_BIN, else the script's cache dir) or raise why not."""
    override = os.environ.get(BIN_ENV)
    bin_dir = Path(override) if override else _default_bin_dir()
    how = "run `make toolchain` (hack/k8s-toolchain.sh; ~15 min cold, cached in ~/.cache/bertmesh)"
    if not override and not (bin_dir.parent / ".complete").is_file():
        raise ToolchainMissingError(f"the e2e toolchain is not built at {bin_dir.parent}: {how}")
    toolchain = Toolchain(bin_dir)
    missing = [name for name in BINARIES if not os.access(toolchain.bin(name), os.X_OK)]
    if not toolchain.istio_crds.is_file():
        missing.append(str(toolchain.istio_crds))
    if missing:
        raise ToolchainMissingError(f"the e2e toolchain in {bin_dir} lacks {', '.join(missing)}: {how}")
    return toolchain


def e2e_required() -> bool:
    """Whether a missing toolchain must fail the run (CI) rather than skip the e2e tier."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")
