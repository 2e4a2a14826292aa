"""The packed attention kernel (C, built here with the system compiler) against PyTorch's attention, alone and
inside the packed engine, fp32 and int8."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from model_server import native
from model_server.backend import native_attention
from model_server.backend.native_attention import NativeAttention
from model_server.backend.onednn import onednn_available
from model_server.backend.packed_bert import PackedModel, plan
from tests.server.checkpoints import mean_pool


@pytest.fixture(scope="module")
def kernel() -> NativeAttention:
    loaded, how = native_attention.load()
    assert loaded is not None, f"the kernel must build on the CI machine (it has a C compiler): {how}"
    return loaded


def reference(qkv: torch.Tensor, lengths: list[int], heads: int) -> torch.Tensor:
    """PyTorch's attention, one sequence at a time."""
    hidden = qkv.shape[1] // 3
    outputs, start = [], 0
    for length in lengths:
        x = qkv[start : start + length].view(length, 3, heads, hidden // heads).permute(1, 2, 0, 3)
        outputs.append(F.scaled_dot_product_attention(x[0], x[1], x[2]).transpose(0, 1).reshape(length, hidden))
        start += length
    return torch.cat(outputs)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=12),
    head_dim=st.sampled_from([32, 64]),
    heads=st.integers(min_value=1, max_value=12),
    spread=st.sampled_from([1.0, 8.0]),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_kernel_equals_pytorch_attention(
    kernel: NativeAttention, lengths: list[int], head_dim: int, heads: int, spread: float, seed: int
) -> None:
    # Lengths around the kernel's tiles (8 query rows, 32 keys) and past them; `spread` gives peaked softmaxes.
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(sum(lengths), 3 * heads * head_dim, generator=generator) * spread
    packing = plan(lengths, torch.device("cpu"))
    ours = kernel.attend(qkv, packing.lengths_tensor, packing.starts, heads)
    exact = reference(qkv.double(), lengths, heads)
    # As accurate as PyTorch's own fp32 attention, within fp32 rounding of the scores: a score's error is about
    # 2^-24 x |q| |k| / sqrt(head_dim), and moves an output by up to that times the largest value.
    pytorch_error = (reference(qkv, lengths, heads).double() - exact).abs().max().item()
    q, k, v = qkv.view(-1, 3, heads, head_dim).unbind(1)
    rounding = 2**-24 * q.norm(dim=-1).max() * k.norm(dim=-1).max() * head_dim**-0.5 * v.abs().max()
    assert (ours.double() - exact).abs().max().item() <= 2 * pytorch_error + 8 * rounding.item() + 1e-6


def test_a_sequence_gets_the_same_bits_in_any_batch_and_thread_count(kernel: NativeAttention) -> None:
    lengths = [5, 40, 129, 1, 64]
    qkv = torch.randn(sum(lengths), 3 * 384)
    packing = plan(lengths, torch.device("cpu"))
    together = kernel.attend(qkv, packing.lengths_tensor, packing.starts, 12)
    threads = torch.get_num_threads()
    try:  # each (sequence, head) is one thread's work, so the thread count changes no bit either
        torch.set_num_threads(1)
        assert torch.equal(kernel.attend(qkv, packing.lengths_tensor, packing.starts, 12), together)
    finally:
        torch.set_num_threads(threads)
    start = 0
    for length in lengths:
        alone_packing = plan([length], torch.device("cpu"))
        alone = kernel.attend(qkv[start : start + length], alone_packing.lengths_tensor, alone_packing.starts, 12)
        assert torch.equal(alone, together[start : start + length])
        start += length


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_the_isa_switch_runs_that_code_and_it_computes_the_same(kernel: NativeAttention, isa: str) -> None:
    library, _ = native.load(native.ATTENTION)
    assert library is not None
    try:
        capped, how = native_attention.load({native_attention.ISA_VARIABLE: isa})
        assert capped is not None and capped.isa == isa and f"{isa} code" in how
        lengths = [1, 17, 33, 130, 64]
        qkv = torch.randn(sum(lengths), 3 * 384)
        packing = plan(lengths, torch.device("cpu"))
        exact = reference(qkv.double(), lengths, 12)
        ours = capped.attend(qkv, packing.lengths_tensor, packing.starts, 12)
        assert (ours.double() - exact).abs().max().item() < 1e-5
    finally:
        restored, _ = native_attention.load()  # one library per process: back to this run's code for the others
    assert restored is not None and restored.isa == kernel.isa
    with pytest.raises(ValueError, match="BERTMESH_KERNEL_ISA=avx3"):
        native_attention.isa_cap({native_attention.ISA_VARIABLE: "avx3"})


def test_kernel_takes_only_what_it_computes(kernel: NativeAttention) -> None:
    cpu = torch.device("cpu")
    assert kernel.supports(32, torch.float32, cpu) and kernel.supports(64, torch.float32, cpu)
    assert not kernel.supports(48, torch.float32, cpu)
    assert not kernel.supports(8, torch.float32, cpu)
    assert not kernel.supports(32, torch.float16, cpu)
    assert not kernel.supports(32, torch.float32, torch.device("cuda"))


def bert(head_dim: int) -> Any:
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=2 * head_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=4 * head_dim,
        max_position_embeddings=300,
    )
    torch.manual_seed(0)
    model: Any = transformers.BertModel(config)
    return model.eval()


def packed_outputs(model: PackedModel, batch: list[list[int]]) -> torch.Tensor:
    packing = plan([len(ids) for ids in batch], torch.device("cpu"))
    with torch.inference_mode():
        return mean_pool(model.encoder(torch.tensor([t for ids in batch for t in ids]), packing), packing)


BATCH = [[1, *(5 + i % 90 for i in range(n)), 2] for n in (3, 30, 31, 90, 250, 7)]


@pytest.mark.parametrize("head_dim", [32, 64])
def test_packed_engine_with_the_kernel_equals_transformers(kernel: NativeAttention, head_dim: int) -> None:
    reference_model = bert(head_dim)
    packed = PackedModel(bert(head_dim))
    assert packed.encoder.use_native_attention(kernel)
    assert all(layer.native is kernel for layer in packed.encoder._typed_layers)
    ours = packed_outputs(packed, BATCH)
    with torch.inference_mode():
        expected = torch.stack(
            [reference_model(input_ids=torch.tensor([ids])).last_hidden_state[0].mean(0) for ids in BATCH]
        )
    assert torch.allclose(ours, expected, atol=1e-5)


@pytest.mark.int8
def test_int8_engine_with_the_kernel_matches_pytorch_attention(kernel: NativeAttention) -> None:
    if not onednn_available():
        pytest.fail("this torch build has no oneDNN: the CPU int8 path cannot be tested")
    with_kernel, without = PackedModel(bert(32)), PackedModel(bert(32))
    for model in (with_kernel, without):
        model.encoder.use_onednn(int8=True)
    assert with_kernel.encoder.use_native_attention(kernel)
    # Attention's float rounding differs, so a rare quantised value may move by one step: compare by cosine.
    cosine = F.cosine_similarity(packed_outputs(with_kernel, BATCH), packed_outputs(without, BATCH))
    assert cosine.min() > 0.9999


def test_an_unsupported_model_keeps_pytorch_attention(kernel: NativeAttention) -> None:
    packed = PackedModel(transformers.BertModel(transformers.BertConfig(hidden_size=48, num_attention_heads=4)))
    assert not packed.encoder.use_native_attention(kernel)
    assert all(layer.native is None for layer in packed.encoder._typed_layers)


def test_prebuild_leaves_libraries_where_the_server_loads_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "model_server.native", "--prebuild", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    libraries = [native.prebuilt_path(library, tmp_path) for library in native.LIBRARIES]
    assert done.stdout.split() == [str(p) for p in libraries]
    assert sorted(p.name for p in libraries[0].parent.iterdir()) == sorted(p.name for p in libraries)
    assert ctypes.CDLL(str(libraries[0])).mkl_serv_intel_cpu_true() == 1
    assert NativeAttention(ctypes.CDLL(str(libraries[1]))).supports(32, torch.float32, torch.device("cpu"))
    # Where an image has them, the server loads them instead of compiling (load is cached per process: call
    # the function under the cache).
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    loaded, how = native.load.__wrapped__(native.ATTENTION)
    assert loaded is not None and how == f"prebuilt {libraries[1]}"
    usage = subprocess.run([sys.executable, "-m", "model_server.native"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage" in usage.stderr
