"""Variable-length attention: every sequence of a packed batch in one call, located by cumulative offsets.

`attend(q, k, v, offsets, max_len)` takes q, k, v [tokens, heads, head_dim] (rows of the packed batch; strided
views of the fused projection are fine), `offsets` int32 [sequences + 1] and the longest length the offsets may
describe, and returns [tokens, heads, head_dim]; rows outside every sequence (bucket padding) are not attended.
Chosen once at load (`choose`), first that applies:

1. `varlen`: torch.nn.attention.varlen.varlen_attn (documented from torch 2.10, so on the GPU machine's 2.11),
   FlashAttention-2's variable-length kernel; CUDA, fp16/bf16. Its launch grid depends only on the number of
   offset slots and `max_len`, never on the lengths, so one CUDA graph serves every batch of a bucket; nothing
   builds a per-shape plan (cuDNN's attention did, for every new shape, and a server meets new shapes all the
   time). Called with flash as the only SDPA backend, as newer torch would otherwise try cuDNN first.
2. `flash-op`: the same kernel through its aten op, where the public wrapper is missing.
   On a GPU each is first run once on a small batch of the engine's layout and kept only if it agrees with the
   reference (a torch release whose wrapper refuses strided views or empty slots falls through to the next).
3. `reference`: PyTorch's scaled-dot-product attention over the sequences gathered into one padded grid. Any
   device and dtype (the CPU path, and CUDA fp32), but it reads lengths on the host, so it cannot be captured.

Not chosen: jagged nested tensors with SDPA reach the same flash kernel on CUDA but take a nested tensor rebuilt
per batch (its max length read on the host unless cached by hand) for no gain over calling the kernel; and
FlexAttention's document mask needs a BlockMask built per batch composition (`create_block_mask`) and
torch.compile to be fast, which is the per-shape work this engine exists to remove.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)

AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class VarlenAttention:
    """One attention implementation: its name, the call, and whether a CUDA graph can capture it."""

    name: str
    attend: AttendFn
    capturable: bool

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Where the attention calls run: flash as the only SDPA backend for `varlen` (cuDNN plans per shape)."""
        if self.name != "varlen":
            yield
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            yield


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
    """Variable-length attention by PyTorch's SDPA on a padded [sequences, longest] grid (any device)."""
    lengths = offsets.diff().long()
    keep = lengths > 0  # empty slots would be all-masked rows (NaN) in SDPA
    starts, lengths = offsets[:-1].long()[keep], lengths[keep]
    out = torch.zeros_like(q)
    if lengths.numel() == 0:
        return out
    grid = torch.arange(int(lengths.max()), device=q.device)
    valid = grid[None, :] < lengths[:, None]
    rows = torch.where(valid, starts[:, None] + grid[None, :], starts[:, None])  # pads repeat a real row, masked

    def gathered(x: torch.Tensor) -> torch.Tensor:
        return x[rows].transpose(1, 2)  # [sequences, heads, longest, head_dim]

    context = F.scaled_dot_product_attention(gathered(q), gathered(k), gathered(v), attn_mask=valid[:, None, None, :])
    out[rows[valid]] = context.transpose(1, 2)[valid]
    return out


def _public_varlen() -> AttendFn | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
        # Positional arguments only: the keyword ones changed between torch releases.
        out: Any = varlen_attn(q, k, v, offsets, offsets, max_len, max_len)
        return out  # type: ignore[no-any-return]

    return attend


def _flash_op() -> AttendFn | None:
    op = getattr(torch.ops.aten, "_flash_attention_forward", None)
    if op is None:
        return None

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
        out: torch.Tensor = op(q, k, v, offsets, offsets, max_len, max_len, 0.0, False, return_debug_mask=False)[0]
        return out

    return attend


def flash_applies(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether FlashAttention-2's kernel takes this device, precision and head size."""
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256


def agrees_with_reference(attention: VarlenAttention, device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether an implementation runs here and matches the reference on a small batch laid out as the engine
    lays out its batches (strided views of a fused projection, padding rows, empty trailing sequence slots)."""
    generator = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(40, 3, 2, head_dim, device=device, dtype=dtype, generator=generator)
    offsets = torch.tensor([0, 7, 30, 33, 33, 33], dtype=torch.int32, device=device)  # rows 33..39: padding
    args = (qkv[:, 0], qkv[:, 1], qkv[:, 2], offsets, 64)
    try:
        with attention.scope():
            got = attention.attend(*args)[:33].float()
    except RuntimeError:
        return False
    want = reference(*args)[:33].float()
    return bool(torch.allclose(got, want, atol=2e-2, rtol=2e-2))


def choose(
    device: torch.device, dtype: torch.dtype, head_dim: int, prefer: str = "auto", probe: bool = True
) -> VarlenAttention:
    """The first implementation (varlen, flash-op, reference) that exists in this torch, applies here and, with
    `probe` on a visible GPU, agrees with the reference there; or the one `prefer` names, when it does."""
    candidates: list[tuple[str, Callable[[], AttendFn | None]]] = []
    if flash_applies(device, dtype, head_dim):
        candidates = [("varlen", _public_varlen), ("flash-op", _flash_op)]
    if prefer != "auto":
        candidates = [(name, make) for name, make in candidates if name == prefer]
    probe = probe and torch.cuda.is_available()
    for name, make in candidates:
        attend = make()
        if attend is None:
            continue
        attention = VarlenAttention(name, attend, capturable=True)
        if not probe or agrees_with_reference(attention, device, dtype, head_dim):
            return attention
        log.warning("variable-length attention %r fails or disagrees with the reference here; trying the next", name)
    return VarlenAttention("reference", reference, capturable=False)
