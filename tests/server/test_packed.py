"""The packed engine against transformers itself, with torch's default kernels and with oneDNN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st

from model_server.backend.onednn import OneDnnInt8Linear, OneDnnLinear, onednn_available
from model_server.backend.packed_bert import PackedModel, plan
from tests.server.checkpoints import mean_pool

TEXTS = ["john lives in paris", "the weather is really good today in london", "berlin", "a b c d e f g h i j"]


@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=80))
def test_attention_blocks_cover_every_token_exactly_once(lengths: list[int]) -> None:
    packing = plan(lengths, torch.device("cpu"))
    rows = torch.cat([block.rows for block in packing.blocks])
    assert sorted(rows.tolist()) == list(range(sum(lengths)))
    for block in packing.blocks:
        assert block.valid.numel() == block.rows.numel() <= block.count * block.longest
    assert packing.positions.tolist() == [p for n in lengths for p in range(n)]


def hidden_states(model: Any, tokenizer: Any, texts: list[str] = TEXTS) -> torch.Tensor:
    """Mean-pooled packed-engine outputs for `texts`, packed together in one batch."""
    encodings = [tokenizer(t)["input_ids"] for t in texts]
    packing = plan([len(e) for e in encodings], torch.device("cpu"))
    ids = torch.tensor([t for e in encodings for t in e])
    with torch.inference_mode():
        return mean_pool(model.encoder(ids, packing), packing)


@pytest.mark.parametrize("kernels", ["default", "onednn"])
def test_packed_encoder_equals_transformers(tiny_models: dict[str, Path], kernels: str) -> None:
    path = str(tiny_models["embedding"])
    tokenizer: Any = transformers.AutoTokenizer.from_pretrained(path)
    reference: Any = transformers.BertModel.from_pretrained(path)
    reference.train(False)
    packed = PackedModel(transformers.BertModel.from_pretrained(path))
    if kernels == "onednn":
        if not onednn_available():
            pytest.fail("this torch build has no oneDNN: the CPU fast path cannot be tested")
        packed.encoder.use_onednn()
        assert all(isinstance(layer.up, OneDnnLinear) for layer in packed.encoder.layers)
    ours = hidden_states(packed, tokenizer)
    with torch.inference_mode():
        expected = torch.stack(
            [reference(**tokenizer(t, return_tensors="pt")).last_hidden_state[0].mean(0) for t in TEXTS]
        )
    assert torch.allclose(ours, expected, atol=1e-5)


@pytest.mark.int8
def test_int8_rows_do_not_depend_on_their_batch() -> None:
    if not onednn_available():
        pytest.fail("this torch build has no oneDNN: the CPU int8 path cannot be tested")
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    int8 = OneDnnInt8Linear(linear)
    rows = torch.randn(10, 64)
    rows[3] *= 50  # an outlier token would set a shared scale for everyone else
    with torch.inference_mode():
        together = int8(rows)
        alone = torch.cat([int8(rows[i : i + 1]) for i in range(10)])
        expected = linear(rows)
    # Per-row scales: a row's result is its own whatever the batch. oneDNN may pick another kernel for one row
    # than for ten (with AMX, the last float bit differs), so equal to float rounding; a scale shared with the
    # outlier row would move every other row by ~35 %.
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    relative = (together - expected).norm(dim=1) / expected.norm(dim=1)
    assert relative.max() < 0.02


@pytest.mark.int8
def test_int8_stages_fused_eager_and_per_projection_agree(tiny_models: dict[str, Path]) -> None:
    """The staged int8 forward (quantise once per stage, compiled or not) computes what quantising at each
    projection computes, close to fp32; and the compiled stages really are in use."""
    if not onednn_available():
        pytest.fail("this torch build has no oneDNN: the CPU int8 path cannot be tested")
    path = str(tiny_models["embedding"])
    tokenizer: Any = transformers.AutoTokenizer.from_pretrained(path)

    def loaded(**onednn: bool) -> tuple[PackedModel, str]:
        model = PackedModel(transformers.BertModel.from_pretrained(path))
        return model, model.encoder.use_onednn(**onednn)

    fp32, _ = loaded()
    fused, fused_kind = loaded(int8=True)
    eager, eager_kind = loaded(int8=True, fuse=False)
    per_projection, _ = loaded(int8=True)
    per_projection.encoder.int8_stages = None  # every OneDnnInt8Linear quantises its own input
    assert fused_kind == "oneDNN int8, stages fused by torch.compile", "torch.compile is expected to work here"
    assert eager_kind == "oneDNN int8, stages eager"
    assert fused.encoder.int8_stages is not None and fused.encoder.int8_stages.compiled
    reference = hidden_states(per_projection, tokenizer)
    for model in (fused, eager):
        assert torch.allclose(hidden_states(model, tokenizer), reference, atol=1e-4)
    cosine = torch.nn.functional.cosine_similarity(reference, hidden_states(fp32, tokenizer))
    assert cosine.min() > 0.98


@pytest.mark.int8
def test_staged_int8_sequences_do_not_depend_on_their_batch(tiny_models: dict[str, Path]) -> None:
    if not onednn_available():
        pytest.fail("this torch build has no oneDNN: the CPU int8 path cannot be tested")
    path = str(tiny_models["embedding"])
    tokenizer: Any = transformers.AutoTokenizer.from_pretrained(path)
    model = PackedModel(transformers.BertModel.from_pretrained(path))
    model.encoder.use_onednn(int8=True)
    together = hidden_states(model, tokenizer)
    alone = torch.cat([hidden_states(model, tokenizer, [text]) for text in TEXTS])
    assert torch.allclose(together, alone, atol=1e-5)
