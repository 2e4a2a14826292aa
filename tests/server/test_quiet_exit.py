"""`bertmesh serve` as a real process ends with its own last line, not a native library's teardown report."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.server.harness import free_port

BERTMESH = [sys.executable, "-m", "bertmesh_cli"]


def test_a_stopped_server_exits_zero_without_leak_reports(tiny_models: dict[str, Path]) -> None:
    args = ["serve", "--model", str(tiny_models["embedding"]), "--port", str(free_port()), "--metrics-port", "0"]
    args += ["--http-port", "0"]
    proc = subprocess.Popen([*BERTMESH, *args], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    log = []
    for line in proc.stderr:  # until the server says it serves (or the output ends)
        log.append(line)
        if " serving " in line:
            break
    proc.send_signal(signal.SIGTERM)
    log.append(proc.stderr.read())
    assert proc.wait(60) == 0
    text = "".join(log)
    assert "stopped" in text, text
    # transformers' BERT modules import torch._dynamo, which loads Triton: its nanobind objects used to be
    # reported one line each when the interpreter tore down.
    assert "nanobind" not in text and "leaked" not in text, text.splitlines()[-5:]
