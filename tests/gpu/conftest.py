"""Tests that need a CUDA device carry the `gpu` marker. CI (`make test`) deselects them with -m 'not gpu';
`make test-gpu` runs them. Elsewhere without a CUDA device they are deselected, and the summary says so: never
skipped, which would read like a pass."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselects gpu tests where no CUDA device is visible, unless they were asked for by marker (-m gpu)."""
    if torch.cuda.is_available() or "gpu" in (config.getoption("markexpr") or "").replace("not gpu", ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"deselected {len(gpu)} gpu tests: no CUDA device here (make test-gpu on a GPU)")


@pytest.fixture(scope="session")
def cuda() -> torch.device:
    """The CUDA device; a failure, not a skip, where there is none."""
    if not torch.cuda.is_available():
        pytest.fail("tests/gpu need a CUDA device (they run with `make test-gpu` on a GPU machine)")
    return torch.device("cuda")
