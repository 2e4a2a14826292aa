"""Lets torch's bundled Intel MKL run its fast code paths on AMD processors (before torch is imported).

Why: MKL picks its vectorised kernels only when it believes the processor is Intel's, through one internal
function, `mkl_serv_intel_cpu_true`. On AMD it falls back to generic code; torch's attention (flash attention
on CPU calls MKL's sgemm) and plain matrix products then run well below what the hardware allows. Measured on
this project's CI machine (2 AMD EPYC cores with AVX-512; `python -m bench engine`): attention's share of fp32
time 23% -> 14%, the packed engine +7% fp32 and +24% int8 in-process, outputs unchanged. MKL still checks the
instruction sets itself: only the vendor test is answered.

How: a one-line C library defining that function (model_server.native: built at start, or prebuilt in images)
is loaded with RTLD_GLOBAL before torch, so the dynamic linker resolves MKL's lookup to it. Nothing is done on
Intel processors, when torch is already imported, without a compiler or prebuilt library, or when turned off
(`bertmesh serve --no-mkl-amd`, or BERTMESH_MKL_AMD=0 for its default). This module never imports torch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from model_server import native

log = logging.getLogger(__name__)

_state: dict[str, str] = {}


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's vendor id (e.g. AuthenticAMD, GenuineIntel); empty where /proc/cpuinfo says nothing."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def enable(wanted: bool) -> str:
    """Loads the vendor answer when wanted and it applies; returns what was done, in words, for the startup log.

    Idempotent: the first call decides.
    """
    if "result" in _state:
        return _state["result"]
    _state["result"] = result = _enable(wanted)
    log.info("MKL on AMD: %s", result)
    return result


def reason_not_to(wanted: bool, vendor: str, torch_loaded: bool) -> str | None:
    """Why the vendor answer must not be loaded (in words), or None when it should be."""
    if not wanted:
        return "off (--no-mkl-amd or BERTMESH_MKL_AMD=0)"
    if vendor != "AuthenticAMD":
        return f"not needed (processor vendor {vendor or 'unknown'})"
    if torch_loaded:
        return "not applied (torch was imported first)"
    return None


def _enable(wanted: bool) -> str:
    reason = reason_not_to(wanted, cpu_vendor(), "torch" in sys.modules)
    if reason is not None:
        return reason
    library, how = native.load(native.MKL_VENDOR, global_scope=True)  # ahead of torch, resolving MKL's lookup
    if library is None:
        return f"not applied ({how}; MKL keeps its generic code on this AMD processor)"
    return f"applied ({how}; MKL uses its vectorised kernels)"
