"""The docs tests run the chart's commands with the real helm (the chart tests' fixture)."""

from __future__ import annotations

from tests.charts.conftest import helm

__all__ = ["helm"]
