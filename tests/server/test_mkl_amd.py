"""model_server.mkl_amd: MKL's vendor test answered on AMD, so torch's MKL picks its vectorised code paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from model_server.config import ENGINE_ENV
from model_server.mkl_amd import cpu_vendor, reason_not_to

ENV, OFF = ENGINE_ENV["mkl_amd"]

# Prints what enable() did, then MKL's own answer to "which code path?" (0: generic; AVX2 and AVX-512 above).
PROBE = """
import ctypes, os, sys
from model_server import mkl_amd
from model_server.config import engine_defaults
print(mkl_amd.enable(engine_defaults().mkl_amd))
import torch
lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
print(lib.mkl_serv_cpu_detect())
print(float((torch.ones(64, 64) @ torch.ones(64, 64)).sum()))
"""


def probe(*, first: str = "", env: dict[str, str] | None = None) -> tuple[str, int, float]:
    done = subprocess.run(
        [sys.executable, "-c", first + PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=True,
    )
    what, branch, total = done.stdout.strip().splitlines()[-3:]
    return what, int(branch), float(total)


def test_cpu_vendor_reads_proc_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n")
    assert cpu_vendor(info) == "AuthenticAMD"
    assert cpu_vendor(tmp_path / "missing") == ""


def test_mkl_takes_its_vectorised_path_on_amd_and_computes_the_same() -> None:
    applied, off = probe(), probe(env={ENV: OFF})
    assert off[0] == "off (--no-mkl-amd or BERTMESH_MKL_AMD=0)"
    assert applied[2] == off[2] == 64 * 64 * 64
    if cpu_vendor() != "AuthenticAMD":  # elsewhere nothing is loaded and MKL keeps its own choice
        assert applied[0].startswith("not needed (processor vendor") and applied[1] == off[1]
        return
    assert applied[0] == "applied (built at start; MKL uses its vectorised kernels)"
    assert applied[1] > off[1] == 0  # MKL's code branch: generic without, vectorised with
    late = probe(first="import torch\n")
    assert late[0] == "not applied (torch was imported first)" and late[1] == 0


def test_the_answer_is_loaded_only_on_amd_before_torch_unless_turned_off() -> None:
    assert reason_not_to(True, "AuthenticAMD", torch_loaded=False) is None
    assert reason_not_to(False, "AuthenticAMD", torch_loaded=False) == "off (--no-mkl-amd or BERTMESH_MKL_AMD=0)"
    assert reason_not_to(True, "GenuineIntel", torch_loaded=False) == "not needed (processor vendor GenuineIntel)"
    assert reason_not_to(True, "", torch_loaded=False) == "not needed (processor vendor unknown)"
    assert reason_not_to(True, "AuthenticAMD", torch_loaded=True) == "not applied (torch was imported first)"
