"""Which int8 product oneDNN runs on this CPU, and whether it can saturate: a pure decision over ISA facts.

Why: oneDNN multiplies uint8 activations by int8 weights with VNNI (`vpdpbusd`, exact 32-bit sums) where the
CPU has AVX512-VNNI or AVX-VNNI and its instruction-set cap (ONEDNN_MAX_CPU_ISA) allows it. Elsewhere (AVX2,
AVX-512 without VNNI, SSE4.1) it uses `vpmaddubsw`, which adds each pair of adjacent u8 x s8 products into a
saturating int16: 255 x 127 x 2 = 64 770 > 32 767. Measured on MiniLM with ONEDNN_MAX_CPU_ISA=AVX2: 0.2-2.4 %
of each projection's outputs clipped (up to 3 % relative error), cosine to fp32 min 0.983 -> 0.976; on random
inputs 17 % relative error. The int8 weights are then limited per pair (model_server.backend.onednn).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# ONEDNN_MAX_CPU_ISA values whose instruction mask includes AVX512_CORE_VNNI (oneDNN's cpu_isa_t); DEFAULT and
# ALL cap nothing. A value not listed here counts as excluding VNNI: the limited weights are exact on every ISA.
_AVX512_VNNI_CAPS = frozenset(
    {
        "AVX512_CORE_VNNI",
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX10_1_512",
        "AVX512_CORE_AMX",
        "AVX10_1_512_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2_512",
        "AVX10_2_512_AMX_2",
        "ALL",
        "DEFAULT",
    }
)
# Those whose mask includes AVX2_VNNI (the 256-bit VEX encoding of the same instruction).
_AVX_VNNI_CAPS = frozenset(
    {
        "AVX2_VNNI",
        "AVX2_VNNI_2",
        "AVX512_CORE_FP16",
        "AVX10_1_512",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2_512",
        "AVX10_2_512_AMX_2",
        "ALL",
        "DEFAULT",
    }
)


@dataclass(frozen=True, slots=True)
class IsaFacts:
    """What decides oneDNN's int8 kernel: the CPU's feature flags and the instruction-set cap, if any."""

    cpu_flags: frozenset[str]
    max_isa: str | None = None  # ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA), as given


@dataclass(frozen=True, slots=True)
class Int8Path:
    """The int8 product oneDNN will run, whether its pair sums can saturate, and why (for the startup log)."""

    instruction: str  # "AVX512-VNNI", "AVX-VNNI" or "vpmaddubsw"
    saturates: bool
    reason: str

    def describe(self) -> str:
        """One line for the serving log: which int8 path runs and why."""
        if self.saturates:
            return (
                f"int8 products by {self.instruction} (int16 pair sums: {self.reason}); int8 weights limited "
                "so that no pair of products can saturate"
            )
        return f"int8 products by {self.instruction} ({self.reason}); full-range int8 weights"


def choose_int8_path(facts: IsaFacts) -> Int8Path:
    """The int8 instruction oneDNN uses for these ISA facts; VNNI only where both the CPU and the cap allow it."""
    cap = (facts.max_isa or "").strip().upper() or "ALL"
    capped = f" under ONEDNN_MAX_CPU_ISA={cap}" if cap not in ("ALL", "DEFAULT") else ""
    if "avx512_vnni" in facts.cpu_flags and cap in _AVX512_VNNI_CAPS:
        return Int8Path("AVX512-VNNI", False, f"the CPU has avx512_vnni{capped}")
    if "avx_vnni" in facts.cpu_flags and cap in _AVX_VNNI_CAPS:
        return Int8Path("AVX-VNNI", False, f"the CPU has avx_vnni{capped}")
    if "avx512_vnni" in facts.cpu_flags or "avx_vnni" in facts.cpu_flags:
        return Int8Path("vpmaddubsw", True, f"the CPU has VNNI but ONEDNN_MAX_CPU_ISA={cap} excludes it")
    return Int8Path("vpmaddubsw", True, "the CPU has no avx512_vnni or avx_vnni")


def detect_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> IsaFacts:
    """This machine's facts: the first processor's flags in /proc/cpuinfo and oneDNN's cap from the environment.

    Where /proc/cpuinfo is unreadable the flags are empty, which decides for the never-saturating weights.
    """
    flags: frozenset[str] = frozenset()
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = frozenset(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    # oneDNN reads ONEDNN_MAX_CPU_ISA first, then its former name.
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return IsaFacts(flags, cap)
