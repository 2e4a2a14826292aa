"""Pure pieces of the server: limits, cache, checkpoint inspection, configuration."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from model_server.batcher import BatchLimits
from model_server.cache import CacheKey, ResultCache
from model_server.checkpoint import inspect_checkpoint
from model_server.config import (
    OPENMP_DEFAULTS,
    BatchingConfig,
    LimitsConfig,
    openmp_defaults,
    parse_args,
    resolve_limits,
)
from model_server.errors import ConfigError, InvalidArgument
from model_server.tasks import Pooling, Task
from model_server.validation import Limits, check_texts

LIMITS = Limits(max_inputs_per_request=3, max_chars_per_input=10, max_tokens_per_input=8, max_message_bytes=100)


def test_input_count_and_characters_at_the_limit_and_one_over() -> None:
    check_texts(["a"] * 3, LIMITS)
    with pytest.raises(InvalidArgument, match=r"inputs: 4 inputs exceed max_inputs_per_request=3"):
        check_texts(["a"] * 4, LIMITS)
    check_texts(["x" * 10], LIMITS)
    with pytest.raises(InvalidArgument, match=r"inputs\[1\]: 11 characters exceed max_chars_per_input=10"):
        check_texts(["ok", "x" * 11], LIMITS)


@pytest.mark.parametrize("texts", [[], [""], ["fine", "   "]])
def test_empty_requests_and_inputs_are_refused(texts: list[str]) -> None:
    with pytest.raises(InvalidArgument, match="inputs"):
        check_texts(texts, LIMITS)


def test_cache_is_lru_and_keyed_on_everything_that_changes_the_result() -> None:
    cache: ResultCache[str] = ResultCache(2)
    a = CacheKey("rev1", "embedding", ("mean", True), "hello")
    cache.put(a, "A")
    assert cache.get(CacheKey("rev2", "embedding", ("mean", True), "hello")) is None
    assert cache.get(CacheKey("rev1", "embedding", ("cls", True), "hello")) is None
    assert cache.get(a) == "A"
    cache.put(CacheKey("rev1", "embedding", ("mean", True), "b"), "B")
    cache.put(CacheKey("rev1", "embedding", ("mean", True), "c"), "C")
    assert cache.get(a) is None  # evicted: least recently used
    assert (cache.hits, len(cache)) == (1, 2)
    off: ResultCache[str] = ResultCache(0)
    off.put(a, "A")
    assert off.get(a) is None and not off.enabled


def test_bundled_model_is_inspected_as_a_sentence_transformer(minilm_path: Path) -> None:
    ckpt = inspect_checkpoint(minilm_path)
    assert ckpt.task is Task.EMBEDDING
    assert (ckpt.default_pooling, ckpt.default_normalize) == (Pooling.MEAN, True)
    assert ckpt.default_max_tokens == 256 and ckpt.max_positions == 512
    assert ckpt.digest.startswith("sha256:")


def test_task_comes_from_the_architecture(tiny_models: dict[str, Path]) -> None:
    for task, path in tiny_models.items():
        ckpt = inspect_checkpoint(path)
        assert ckpt.task is Task(task)
    assert inspect_checkpoint(tiny_models["token-classification"]).labels[:2] == ("O", "B-PER")


def test_pickle_only_checkpoints_are_refused(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    bad = tmp_path / "pickled"
    shutil.copytree(tiny_models["embedding"], bad)
    for weights in bad.glob("*.safetensors"):
        weights.rename(bad / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors only"):
        inspect_checkpoint(bad)


def test_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        inspect_checkpoint(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match=r"no \*\.safetensors"):
        inspect_checkpoint(tmp_path)


def test_limits_resolve_against_the_model_and_refuse_impossible_settings() -> None:
    def resolve(*argv: str) -> tuple[Limits, BatchLimits]:
        config = parse_args(argv)
        return resolve_limits(config.limits, config.batching, 256, 512)

    limits, batching = resolve_limits(LimitsConfig(), BatchingConfig(), model_max_tokens=256, max_positions=512)
    assert limits.max_tokens_per_input == 256
    assert batching.max_queued_tokens >= limits.max_inputs_per_request * 256
    with pytest.raises(ConfigError, match="exceeds the model's 512 positions"):
        resolve("--max-tokens-per-input", "600")
    with pytest.raises(ConfigError, match="one input must fit in a batch"):
        resolve("--max-batch-tokens", "100")
    with pytest.raises(ConfigError, match="below one full request"):
        resolve("--max-queued-tokens", "1000")


def test_bad_flags_exit_with_usage() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--max-inputs-per-request", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--precision", "fp8"])


def test_l2_normalize_scales_to_unit_length_and_keeps_zero_vectors() -> None:
    from model_server.postprocess import l2_normalize

    assert np.allclose(l2_normalize(np.array([3.0, 4.0], dtype=np.float32)), [0.6, 0.8])
    assert np.allclose(l2_normalize(np.zeros(3, dtype=np.float32)), 0.0)


def test_openmp_defaults_apply_only_when_the_operator_set_neither_variable() -> None:
    env: dict[str, str] = {}
    openmp_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"} == OPENMP_DEFAULTS
    for mine in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}):
        env = dict(mine)
        openmp_defaults(env)
        assert env == mine


@pytest.mark.parametrize("width", [0, 1, 31, 32, 384, 1000])
def test_embeddings_on_the_wire_are_what_protobuf_writes_for_the_same_floats(width: int) -> None:
    from model_server.proto.bertmesh.v1 import inference_pb2 as pb
    from model_server.tasks.embedding import embeddings_wire

    rows = [np.random.default_rng(n).standard_normal(width).astype(np.float32) for n in range(3)]
    if width:
        rows[0][0], rows[1][-1] = np.nan, -np.inf  # bit patterns pass through untouched
    written = pb.EmbedResponse(embeddings=[pb.Embedding(values=row.tolist()) for row in rows]).SerializeToString()
    assert embeddings_wire(rows) == written
    parsed = pb.EmbedResponse.FromString(embeddings_wire(rows))
    assert [np.asarray(e.values, np.float32).tobytes() for e in parsed.embeddings] == [r.tobytes() for r in rows]


def test_offsets_word_ids_and_flags_are_read_from_the_tokenizer_on_first_use(minilm_path: Path) -> None:
    from model_server.tokenization import Encoded, TextTokenizer

    tokenizer = TextTokenizer.from_dir(minilm_path)
    text = "Tokenizers split unbelievably long words."
    (encoded,) = tokenizer.encode([text])
    source = tokenizer._full.encode(text)
    # Nothing per token is built until asked for (an embedding never asks).
    assert encoded._offsets is None and encoded._word_ids is None and encoded._special is None
    assert encoded.ids == tuple(source.ids) and len(encoded) == len(source.ids)
    assert encoded.offsets == tuple(source.offsets) and encoded.word_ids == tuple(source.word_ids)
    assert encoded.special == tuple(bool(s) for s in source.special_tokens_mask)
    assert encoded.special[0] and encoded.special[-1] and not any(encoded.special[1:-1])
    assert text[slice(*encoded.offsets[1])].lower() == tokenizer.token_string(encoded.ids[1])
    with pytest.raises(ValueError, match="offsets, word ids and special flags"):
        Encoded((1, 2), offsets=((0, 0), (0, 0)))


def test_event_loop_choice_names_the_loop_it_makes(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvloop

    from model_server.server import event_loop

    for choice, expected in (("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")):
        factory, name = event_loop(choice)
        loop = factory()
        try:
            assert name == expected and isinstance(loop, uvloop.Loop) == (expected == "uvloop")
        finally:
            loop.close()
    # Without uvloop: auto falls back to asyncio's loop, an explicit uvloop is refused with the fix.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert event_loop("auto")[1] == "asyncio"
    with pytest.raises(ConfigError, match="--event-loop uvloop: uvloop is not installed"):
        event_loop("uvloop")
