"""Fixtures for the chart tests: the real helm binary from the e2e toolchain (no cluster needed)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.charts.chart import Helm
from tests.e2e.toolchain import REQUIRE_ENV, ToolchainMissingError, e2e_required, find_toolchain


@pytest.fixture(scope="session")
def helm() -> Iterator[Helm]:
    """The pinned helm (v4); skips without the toolchain (fails under BERTMESH_REQUIRE_E2E=1)."""
    try:
        toolchain = find_toolchain()
    except ToolchainMissingError as exc:
        reason = f"chart tests need the real helm: {exc}"
    else:
        home = Path(tempfile.mkdtemp(prefix="bertmesh-helm-"))
        yield Helm(toolchain.bin("helm"), home)
        shutil.rmtree(home, ignore_errors=True)
        return
    if e2e_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: the chart tests may not be skipped)", pytrace=False)
    pytest.skip(reason)
