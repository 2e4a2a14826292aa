"""bench/batcher_loop.py drives the batcher the way the data plane does and reports per request and per text."""

from __future__ import annotations

import re

import pytest

from bench.batcher_loop import main


def test_it_reports_each_request_size(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--texts", "2,8", "--requests", "64"])
    found = [re.match(r"\.: (\d+) texts: [\d.]+ us per request, [\d.]+ us/text$", line) for line in lines_of(capsys)]
    assert all(found) and [m[1] for m in found if m] == ["2", "8"]


def lines_of(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What was printed, line by line."""
    return capsys.readouterr().out.splitlines()
