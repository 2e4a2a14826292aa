"""BERT over packed tokens: every matrix multiply runs on the batch's real tokens only, never on padding.

A batch of sequences becomes one [tokens, hidden] matrix. Embeddings, the fused query/key/value projection, the
attention output projection and the feed-forward layers run on it directly; only attention, which mixes tokens
within a sequence, regroups them: sequences of similar length are gathered into small padded blocks for
PyTorch's scaled-dot-product attention and scattered back. Weights are taken from a loaded Hugging Face BERT
(absolute positions, post-layer-norm), so outputs equal transformers' to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from model_server.backend.onednn import FUSED_ACTIVATIONS, OneDnnInt8Linear, OneDnnLinear

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
    starts: torch.Tensor
    sequence_of_token: torch.Tensor
    positions: torch.Tensor
    blocks: tuple[AttentionBlock, ...]

    @property
    def tokens(self) -> int:
        """Real tokens in the batch."""
        return sum(self.lengths)


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
    sequence_of_token = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    positions = torch.cat([torch.arange(length) for length in lengths])
    return Packing(
        lengths=tuple(lengths),
        starts=torch.tensor(starts_list, dtype=torch.long, device=device),
        sequence_of_token=sequence_of_token.to(device),
        positions=positions.to(device),
        blocks=tuple(blocks),
    )


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

    def use_onednn(self, hidden_act: str, *, int8: bool) -> None:
        """Runs the four projections with oneDNN, weights packed once: fp32 with the feed-forward activation
        fused, or int8 with every token quantised on its own (see model_server.backend.onednn)."""
        if int8:
            self.qkv, self.out, self.up, self.down = (
                OneDnnInt8Linear(m) for m in (self.qkv, self.out, self.up, self.down)
            )
            return
        fused = FUSED_ACTIVATIONS.get(hidden_act)
        self.qkv, self.out, self.down = (OneDnnLinear(m) for m in (self.qkv, self.out, self.down))
        if fused is not None:
            self.up = OneDnnLinear(self.up, *fused)
            self.act = nn.Identity()
        else:
            self.up = OneDnnLinear(self.up)

    def attend(self, qkv: torch.Tensor, packing: Packing) -> torch.Tensor:
        """Scaled-dot-product attention per block of similar-length sequences; returns [tokens, hidden]."""
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
        self.layers = nn.ModuleList(_Layer(layer, config.num_attention_heads) for layer in bert.encoder.layer)
        self.hidden_act = str(config.hidden_act)

    def use_onednn(self, *, int8: bool = False) -> None:
        """Switches every layer's projections to oneDNN kernels (CPU; fp32, or int8); call once after loading."""
        for layer in self.layers:
            assert isinstance(layer, _Layer)
            layer.use_onednn(self.hidden_act, int8=int8)

    def forward(self, ids: torch.Tensor, packing: Packing) -> torch.Tensor:
        """Hidden states [tokens, hidden] of packed token ids [tokens] (token type 0 throughout)."""
        x: torch.Tensor = self.norm(self.word(ids) + self.position(packing.positions) + self.token_type.weight[0])
        for layer in self.layers:
            x = layer(x, packing)
        return x


def mean_pool(hidden: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Mean of each sequence's token vectors: [sequences, hidden]."""
    sums = hidden.new_zeros(len(packing.lengths), hidden.shape[1]).index_add_(0, packing.sequence_of_token, hidden)
    counts = torch.tensor(packing.lengths, dtype=hidden.dtype, device=hidden.device)
    return sums / counts[:, None]


def first_tokens(hidden: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Each sequence's first ([CLS]) token vector: [sequences, hidden]."""
    return hidden.index_select(0, packing.starts)


class PackedModel(nn.Module):
    """A packed BERT encoder with the head of one task, taken from a transformers model."""

    def __init__(self, model: Any, task: str) -> None:
        super().__init__()
        self.task = task
        bert = model if task == "embedding" else model.bert
        self.encoder = PackedBertEncoder(bert)
        if task == "sequence-classification":
            self.pooler = bert.pooler
            self.classifier = model.classifier
        elif task == "token-classification":
            self.classifier = model.classifier
        elif task == "fill-mask":
            self.mlm_head = model.cls


def packed_tasks() -> frozenset[str]:
    """The tasks PackedModel has heads for (the values of model_server.tasks.Task)."""
    return frozenset({"embedding", "sequence-classification", "token-classification", "fill-mask"})
