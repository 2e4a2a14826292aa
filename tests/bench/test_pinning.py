"""The benchmark's --pin: CPU lists parsed, and a started server really runs on the CPUs it was given."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bench.procs import ServerProcess
from bench.run import parse_pin


def test_pin_lists_and_ranges() -> None:
    assert parse_pin("") == ((), ())
    assert parse_pin("0/1") == ((0,), (1,))
    assert parse_pin("0-2,5/3,4") == ((0, 1, 2, 5), (3, 4))


@pytest.mark.parametrize("bad", ["0", "0/", "/1", "a/1"])
def test_pin_refuses_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_pin(bad)


def test_server_process_runs_on_its_cpus(tmp_path: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    code = "import os, time; print(sorted(os.sched_getaffinity(0)), flush=True); time.sleep(30)"
    server = ServerProcess("probe", [sys.executable, "-c", code], tmp_path / "probe.log", {}, tmp_path, (cpu,))
    try:
        server.wait_ready(lambda: "]" in (tmp_path / "probe.log").read_text(), timeout=30)
        assert os.sched_getaffinity(server.pid) == {cpu}
        assert server.tail().strip() == str([cpu])
    finally:
        server.stop()
