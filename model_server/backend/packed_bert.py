"""BERT over packed tokens: every matrix multiply runs on the batch's real tokens only, never on padding.

A batch of sequences becomes one [tokens, hidden] matrix. Embeddings, the fused query/key/value projection, the
attention output projection and the feed-forward layers run on it directly; only attention mixes tokens within a
sequence: the packed attention kernel reads each sequence straight from the packed matrix, and without it
sequences of similar length are gathered into small padded blocks for PyTorch's scaled-dot-product attention
and scattered back. Weights are taken from a loaded Hugging Face BERT
(absolute positions, post-layer-norm), so outputs equal transformers' to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from model_server.backend.native_attention import NativeAttention
from model_server.backend.onednn import (
    FUSED_ACTIVATIONS,
    INT8_ACTIVATIONS,
    Int8Stages,
    OneDnnInt8Linear,
    OneDnnLinear,
)

# Sequences share an attention block while the block's padded size stays within this share of real tokens...
BLOCK_PAD_TOLERANCE = 0.10
# ...and a block holds at most this many sequences (bounds the gather/scatter index sizes).
BLOCK_MAX_SEQUENCES = 64


def supports(config: Any) -> bool:
    """Whether a transformers config describes an encoder this module reproduces exactly."""
    return (
        getattr(config, "model_type", None) == "bert"
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and not getattr(config, "is_decoder", False)
    )


@dataclass(frozen=True)
class AttentionBlock:
    """Sequences attended together: `gather` picks packed rows into [count, longest] (pad positions repeat a
    real row: the key mask hides them and their outputs are dropped), `valid` lists the real positions of that
    grid and `rows` their packed rows."""

    count: int
    longest: int
    gather: torch.Tensor
    key_mask: torch.Tensor | None
    valid: torch.Tensor
    rows: torch.Tensor


@dataclass(frozen=True)
class Packing:
    """Where each sequence's tokens sit in the packed matrix, and how attention regroups them."""

    lengths: tuple[int, ...]
    lengths_tensor: torch.Tensor  # int64 [sequences], for the native attention kernel
    starts: torch.Tensor
    sequence_of_token: torch.Tensor
    positions: torch.Tensor

    @property
    def tokens(self) -> int:
        """Real tokens in the batch."""
        return sum(self.lengths)

    @cached_property
    def blocks(self) -> tuple[AttentionBlock, ...]:
        """Blocks of similar-length sequences for PyTorch's attention (planned on first use: the native kernel
        needs none)."""
        return _blocks(self.lengths, self.starts.tolist(), self.starts.device)


def _block_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Sequence indices grouped by similar length (sorted), each group padding little."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups:
            group = groups[-1]
            padded = lengths[i] * (len(group) + 1)
            if len(group) < BLOCK_MAX_SEQUENCES and padded <= (real + lengths[i]) * (1 + BLOCK_PAD_TOLERANCE):
                group.append(i)
                real += lengths[i]
                continue
        groups.append([i])
        real = lengths[i]
    return groups


def plan(lengths: Sequence[int], device: torch.device) -> Packing:
    """The packing of sequences with these lengths (in batch order)."""
    starts_list = [0]
    for length in lengths[:-1]:
        starts_list.append(starts_list[-1] + length)
    lengths_tensor = torch.tensor(lengths, dtype=torch.long)
    sequence_of_token = torch.repeat_interleave(torch.arange(len(lengths)), lengths_tensor)
    positions = torch.cat([torch.arange(length) for length in lengths])
    return Packing(
        lengths=tuple(lengths),
        lengths_tensor=lengths_tensor.to(device),
        starts=torch.tensor(starts_list, dtype=torch.long, device=device),
        sequence_of_token=sequence_of_token.to(device),
        positions=positions.to(device),
    )


def _blocks(lengths: Sequence[int], starts_list: Sequence[int], device: torch.device) -> tuple[AttentionBlock, ...]:
    blocks = []
    for group in _block_groups(lengths):
        longest = max(lengths[i] for i in group)
        gather = torch.full((len(group), longest), starts_list[group[0]], dtype=torch.long)
        valid = torch.zeros((len(group), longest), dtype=torch.bool)
        for row, i in enumerate(group):
            gather[row, : lengths[i]] = torch.arange(starts_list[i], starts_list[i] + lengths[i])
            valid[row, : lengths[i]] = True
        needs_mask = any(lengths[i] != longest for i in group)
        blocks.append(
            AttentionBlock(
                count=len(group),
                longest=longest,
                gather=gather.reshape(-1).to(device),
                # SDPA's boolean mask: True where a key may be attended to.
                key_mask=valid[:, None, None, :].to(device) if needs_mask else None,
                valid=valid.reshape(-1).nonzero().squeeze(1).to(device),
                rows=gather[valid].to(device),
            )
        )
    return tuple(blocks)


class _Layer(nn.Module):
    """One BERT layer on packed tokens, with query, key and value fused into one projection."""

    def __init__(self, hf_layer: Any, heads: int) -> None:
        super().__init__()
        attention = hf_layer.attention
        q, k, v = attention.self.query, attention.self.key, attention.self.value
        hidden = q.in_features
        self.heads = heads
        self.head_dim = hidden // heads
        qkv = nn.Linear(hidden, 3 * hidden, dtype=q.weight.dtype, device=q.weight.device)
        with torch.no_grad():
            qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        self.qkv: nn.Module = qkv
        self.out: nn.Module = attention.output.dense
        self.norm1 = attention.output.LayerNorm
        self.up: nn.Module = hf_layer.intermediate.dense
        self.act: nn.Module = hf_layer.intermediate.intermediate_act_fn
        self.down: nn.Module = hf_layer.output.dense
        self.norm2 = hf_layer.output.LayerNorm
        # Set by use_onednn(int8=True): the four int8 projections and the activation, for the staged forward.
        self.int8: tuple[OneDnnInt8Linear, OneDnnInt8Linear, OneDnnInt8Linear, OneDnnInt8Linear] | None = None
        self.int8_activation: str = "gelu"
        self.native: NativeAttention | None = None  # set by PackedBertEncoder.use_native_attention

    def use_onednn(self, hidden_act: str, *, int8: bool) -> None:
        """Runs the four projections with oneDNN, weights packed once: fp32 with the feed-forward activation
        fused, or int8 with every token quantised on its own (see model_server.backend.onednn)."""
        if int8:
            qkv, out, up, down = (OneDnnInt8Linear(m) for m in (self.qkv, self.out, self.up, self.down))
            self.qkv, self.out, self.up, self.down = qkv, out, up, down
            self.int8 = (qkv, out, up, down)
            return
        fused = FUSED_ACTIVATIONS.get(hidden_act)
        self.qkv, self.out, self.down = (OneDnnLinear(m) for m in (self.qkv, self.out, self.down))
        if fused is not None:
            self.up = OneDnnLinear(self.up, *fused)
            self.act = nn.Identity()
        else:
            self.up = OneDnnLinear(self.up)

    def attend(self, qkv: torch.Tensor, packing: Packing) -> torch.Tensor:
        """Scaled-dot-product attention within each sequence; returns [tokens, hidden]. Without the native
        kernel: PyTorch's, per block of similar-length sequences."""
        if self.native is not None:
            return self.native.attend(qkv, packing.lengths_tensor, packing.starts, self.heads)
        hidden = self.heads * self.head_dim
        context = qkv.new_empty(qkv.shape[0], hidden)
        for block in packing.blocks:
            x = qkv.index_select(0, block.gather)
            x = x.view(block.count, block.longest, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(x[0], x[1], x[2], attn_mask=block.key_mask)
            out = out.transpose(1, 2).reshape(block.count * block.longest, hidden)
            context.index_copy_(0, block.rows, out.index_select(0, block.valid))
        return context

    def forward(self, x: torch.Tensor, packing: Packing) -> torch.Tensor:
        """Attention and feed-forward blocks, each followed by residual and layer norm (post-norm BERT)."""
        x = self.norm1(self.out(self.attend(self.qkv(x), packing)) + x)
        out: torch.Tensor = self.norm2(self.down(self.act(self.up(x))) + x)
        return out

    def forward_int8(
        self, x: torch.Tensor, quantised: torch.Tensor, magnitude: torch.Tensor, packing: Packing, stages: Int8Stages
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` with int8 projections, taking and returning the hidden states also quantised: each
        quantisation is done once, fused with the work before it (see Int8Stages)."""
        assert self.int8 is not None
        qkv, out, up, down = self.int8
        context = self.attend(stages.scale_back(qkv.product(quantised), magnitude, qkv.bias), packing)
        quantised, magnitude = stages.quantise(context)
        x, quantised, magnitude = stages.norm(
            out.product(quantised), magnitude, out.bias, x, self.norm1.weight, self.norm1.bias, self.norm1.eps
        )
        quantised, magnitude = stages.activation(up.product(quantised), magnitude, up.bias, self.int8_activation)
        result: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = stages.norm(
            down.product(quantised), magnitude, down.bias, x, self.norm2.weight, self.norm2.bias, self.norm2.eps
        )
        return result


class PackedBertEncoder(nn.Module):
    """BERT embeddings and encoder layers from a loaded transformers BertModel, run on packed tokens."""

    def __init__(self, bert: Any) -> None:
        super().__init__()
        config = bert.config
        embeddings = bert.embeddings
        self.word = embeddings.word_embeddings
        self.position = embeddings.position_embeddings
        self.token_type = embeddings.token_type_embeddings
        self.norm = embeddings.LayerNorm
        layers = [_Layer(layer, config.num_attention_heads) for layer in bert.encoder.layer]
        self.layers = nn.ModuleList(layers)
        self._typed_layers = layers  # the same modules, typed, for the int8 forward's loop
        self.hidden_act = str(config.hidden_act)
        self.hidden_size = int(config.hidden_size)
        self.intermediate_size = int(config.intermediate_size)
        self.int8_stages: Int8Stages | None = None

    def use_onednn(self, *, int8: bool = False, fuse: bool = True) -> str:
        """Switches every layer's projections to oneDNN kernels (CPU; fp32, or int8); call once after loading.

        For int8 the element-wise work between products runs as staged kernels, compiled when `fuse` and a
        compiler allow. Returns what runs, for the startup log.
        """
        layers = self._typed_layers
        for layer in layers:
            layer.use_onednn(self.hidden_act, int8=int8)
        activation = INT8_ACTIVATIONS.get(self.hidden_act)
        if not int8:
            return "oneDNN fp32"
        if activation is None:
            return "oneDNN int8 (unstaged)"
        for layer in layers:
            layer.int8_activation = activation
        stages = Int8Stages()
        self.int8_stages = stages
        eps = float(layers[0].norm1.eps)
        if fuse and stages.compile(self.hidden_size, self.intermediate_size, activation, eps):
            return "oneDNN int8, stages fused by torch.compile"
        return "oneDNN int8, stages eager"

    def use_native_attention(self, kernel: NativeAttention) -> bool:
        """Runs attention with the packed kernel where it supports this model's heads, precision and device."""
        layer = self._typed_layers[0]
        if not kernel.supports(layer.head_dim, self.word.weight.dtype, self.word.weight.device):
            return False
        for layer in self._typed_layers:
            layer.native = kernel
        return True

    def use_pytorch_attention(self) -> None:
        """Runs attention with PyTorch's scaled-dot-product attention (undoes use_native_attention)."""
        for layer in self._typed_layers:
            layer.native = None

    def forward(self, ids: torch.Tensor, packing: Packing, types: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [tokens, hidden] of packed token ids [tokens] and their token types (None: type 0
        throughout, without a lookup)."""
        typed = self.token_type.weight[0] if types is None else self.token_type(types)
        x: torch.Tensor = self.norm(self.word(ids) + self.position(packing.positions) + typed)
        stages = self.int8_stages
        if stages is not None:
            quantised, magnitude = stages.quantise(x)
            for layer in self._typed_layers:
                x, quantised, magnitude = layer.forward_int8(x, quantised, magnitude, packing, stages)
            return x
        for module in self.layers:
            x = module(x, packing)
        return x


class PackedModel(nn.Module):
    """A packed BERT encoder beside the task layers its transformers model carries: the pooler and classifier of
    classification models, the language-model head `cls` of masked-LM models (None where absent)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        bert = model.base_model  # a BertModel's base model is itself
        self.encoder = PackedBertEncoder(bert)
        self.pooler: nn.Module | None = bert.pooler
        self.classifier: nn.Module | None = getattr(model, "classifier", None)
        self.mlm_head: nn.Module | None = getattr(model, "cls", None)
