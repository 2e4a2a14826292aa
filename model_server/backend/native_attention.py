"""The packed attention kernel (packed_attention.c) for CPU fp32: each sequence attends within itself, read
straight from the fused query/key/value matrix, with no padding and no gather or scatter.

Measured on this project's CI machine (`python -m bench engine`, docs/benchmarks.md): the bundled MiniLM (head_dim
32) +8 % fp32 and +15 % int8 in process against PyTorch's CPU flash attention over the packed engine's blocks.
Used for head dimensions 32 and 64 on CPU; elsewhere, without a C compiler or prebuilt library, or with
`--attention torch` (BERTMESH_ATTENTION=torch for its default), the packed engine keeps PyTorch's
scaled-dot-product attention.
"""

from __future__ import annotations

import ctypes

import torch

from model_server import native

PROFILE_NAME = "bertmesh::packed_attention"


class NativeAttention:
    """The loaded kernel: `attend(qkv, lengths, starts, heads)` -> [tokens, hidden]."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._supports = library.bertmesh_attention_supports
        self._supports.argtypes = [ctypes.c_int64]
        self._supports.restype = ctypes.c_int
        self._attend = library.bertmesh_packed_attention
        self._attend.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_float, ctypes.c_int]
        self._attend.restype = ctypes.c_int

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


def load() -> tuple[NativeAttention | None, str]:
    """The kernel, or None; and what happened, in words, for the startup log."""
    library, how = native.load(native.ATTENTION)
    if library is None:
        return None, f"PyTorch scaled-dot-product attention (packed kernel unavailable: {how})"
    return NativeAttention(library), f"packed attention kernel ({how})"
