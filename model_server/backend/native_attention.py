"""The packed attention kernel (packed_attention.c) for CPU fp32: each sequence attends within itself, read
straight from the fused query/key/value matrix, with no padding and no gather or scatter.

Measured on this project's CI machine (`python -m bench engine`, docs/benchmarks.md): the bundled MiniLM (head_dim
32) +8 % fp32 and +15 % int8 in process against PyTorch's CPU flash attention over the packed engine's blocks.
Whether it runs is decided at load by timing (`--attention auto`, model_server.backend.packed_cpu), or by
`--attention native|torch`; only head dimensions 32 and 64 on CPU, and never without a C compiler or prebuilt
library. `python -m bench kernels` compares it with PyTorch's attention per instruction set.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

import torch

from model_server import native

PROFILE_NAME = "bertmesh::packed_attention"
# BERTMESH_KERNEL_ISA caps the instruction set of the kernel's code (as ONEDNN_MAX_CPU_ISA caps oneDNN's), so
# that an AVX-512 machine measures what an AVX2-only one runs. The kernel's levels, by name:
ISA_LEVELS = {"avx512": 2, "avx2": 1, "baseline": 0}
ISA_VARIABLE = "BERTMESH_KERNEL_ISA"


def isa_cap(env: Mapping[str, str] | None = None) -> int:
    """The kernel's instruction-set cap from BERTMESH_KERNEL_ISA (-1: none, the best the processor has)."""
    value = (os.environ if env is None else env).get(ISA_VARIABLE, "").strip().lower()
    if not value:
        return -1
    if value not in ISA_LEVELS:
        raise ValueError(f"{ISA_VARIABLE}={value}: expected one of {', '.join(ISA_LEVELS)}")
    return ISA_LEVELS[value]


class NativeAttention:
    """The loaded kernel: `attend(qkv, lengths, starts, heads)` -> [tokens, hidden]."""

    def __init__(self, library: ctypes.CDLL, cap: int = -1) -> None:
        self._supports = library.bertmesh_attention_supports
        self._supports.argtypes = [ctypes.c_int64]
        self._supports.restype = ctypes.c_int
        self._attend = library.bertmesh_packed_attention
        self._attend.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_float, ctypes.c_int]
        self._attend.restype = ctypes.c_int
        select = library.bertmesh_attention_select
        select.argtypes = [ctypes.c_int]
        select.restype = ctypes.c_int
        level = select(cap)
        self.isa = next(name for name, number in ISA_LEVELS.items() if number == level)

    def supports(self, head_dim: int, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether the kernel runs attention of this shape, precision and device."""
        return device.type == "cpu" and dtype == torch.float32 and bool(self._supports(head_dim))

    def attend(self, qkv: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, heads: int) -> torch.Tensor:
        """Softmax(q k^T / sqrt(head_dim)) v of every sequence; qkv [tokens, 3 * hidden] (queries, keys, values),
        lengths and starts int64 [sequences]. Runs on torch's thread count; ctypes releases the GIL for the call."""
        qkv = qkv.contiguous()
        hidden = qkv.shape[1] // 3
        head_dim = hidden // heads
        out = qkv.new_empty(qkv.shape[0], hidden)
        with torch.profiler.record_function(PROFILE_NAME):  # visible in torch.profiler (bench engine's shares)
            status = self._attend(
                qkv.data_ptr(),
                out.data_ptr(),
                starts.data_ptr(),
                lengths.data_ptr(),
                lengths.shape[0],
                heads,
                head_dim,
                head_dim**-0.5,
                torch.get_num_threads(),
            )
        if status != 0:  # -2: out of memory for the per-thread scratch (supports() was checked at load)
            raise MemoryError(f"packed attention kernel failed ({status})")
        return out


def load(env: Mapping[str, str] | None = None) -> tuple[NativeAttention | None, str]:
    """The kernel, its code capped by BERTMESH_KERNEL_ISA in `env` (default os.environ), or None; and what
    happened, in words, for the startup log."""
    library, how = native.load(native.ATTENTION)
    if library is None:
        return None, f"PyTorch scaled-dot-product attention (packed kernel unavailable: {how})"
    kernel = NativeAttention(library, isa_cap(env))
    return kernel, f"packed attention kernel ({kernel.isa} code; {how})"
