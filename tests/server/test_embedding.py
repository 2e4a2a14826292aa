"""Embeddings over real gRPC equal sentence-transformers on the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from model_server.client import BertmeshClient
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from tests.server.corpus import SENTENCES
from tests.server.harness import ServerThread, config_for, details, metric_value, scrape


@pytest.fixture(scope="module")
def reference(minilm_path: Path) -> SentenceTransformer:
    return SentenceTransformer(str(minilm_path), device="cpu")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cosine: np.ndarray = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return cosine


def test_embeddings_match_sentence_transformers(minilm_client: BertmeshClient, reference: SentenceTransformer) -> None:
    ours = minilm_client.embed(SENTENCES)
    theirs = reference.encode(SENTENCES, convert_to_numpy=True)
    assert ours.shape == (len(SENTENCES), 384)
    assert cosine_rows(ours, theirs).min() >= 0.9999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # the model ends in Normalize


def test_each_input_is_independent_of_its_batch(minilm_client: BertmeshClient) -> None:
    together = minilm_client.embed(SENTENCES)
    alone = np.stack([minilm_client.embed([s])[0] for s in SENTENCES[:4]])
    assert cosine_rows(together[:4], alone).min() >= 0.9999


def test_cls_pooling_and_raw_vectors(minilm_client: BertmeshClient, reference: SentenceTransformer) -> None:
    raw_mean = minilm_client.embed(SENTENCES[:3], normalize=False)
    token_vectors = reference.encode(SENTENCES[:3], output_value="token_embeddings")
    expected_mean = np.stack([t.numpy().mean(axis=0) for t in token_vectors])
    assert np.allclose(raw_mean, expected_mean, atol=1e-4)
    cls = minilm_client.embed(SENTENCES[:3], pooling="cls", normalize=False)
    assert np.allclose(cls, np.stack([t.numpy()[0] for t in token_vectors]), atol=1e-4)


def test_truncation_is_per_request(minilm_client: BertmeshClient, reference: SentenceTransformer) -> None:
    long_text = " ".join(["word"] * 400)  # ~402 tokens, over the 256 limit
    with pytest.raises(grpc.RpcError) as refused:
        minilm_client.embed([long_text])
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "max_tokens_per_input=256" in details(refused.value)
    cut = minilm_client.embed([long_text], truncate=True)
    # sentence-transformers truncates to its max_seq_length (256) as well.
    assert cosine_rows(cut, reference.encode([long_text]))[0] >= 0.9999


def test_usage_and_the_result_cache(minilm_server: ServerThread) -> None:
    with grpc.insecure_channel(minilm_server.target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        text = "a sentence that is only ever embedded by the cache test"
        hits_before = metric_value(scrape(minilm_server), "bertmesh_cache_hits_total")
        first = stub.Embed(pb.EmbedRequest(inputs=[text, text], id="r1"), timeout=30)
        second = stub.Embed(pb.EmbedRequest(inputs=[text], id="r2"), timeout=30)
        raw = stub.Embed(pb.EmbedRequest(inputs=[text], normalize=False), timeout=30)
    assert first.id == "r1" and first.model == "all-MiniLM-L6-v2" and first.dimensions == 384
    assert first.usage.tokens > 0 and first.usage.cached_inputs == 0  # the duplicate is computed once
    assert second.usage.tokens == 0 and second.usage.cached_inputs == 1
    assert list(second.embeddings[0].values) == list(first.embeddings[0].values)
    assert raw.usage.cached_inputs == 0  # other options, other cache entry
    assert metric_value(scrape(minilm_server), "bertmesh_cache_hits_total") == hits_before + 1


def test_stream_answers_each_request_in_order(minilm_client: BertmeshClient) -> None:
    batches = [SENTENCES[i : i + 3] for i in range(0, len(SENTENCES), 3)]
    streamed = list(minilm_client.embed_stream(batches, timeout=60))
    assert [len(b) for b in streamed] == [len(b) for b in batches]
    direct = minilm_client.embed(SENTENCES)
    assert cosine_rows(np.concatenate(streamed), direct).min() >= 0.9999


def test_model_info_reports_model_and_limits(minilm_client: BertmeshClient) -> None:
    info = minilm_client.model_info()
    assert (info.name, info.task, info.precision, info.device) == ("all-MiniLM-L6-v2", pb.TASK_EMBEDDING, "fp32", "cpu")
    assert info.dimensions == 384 and info.default_normalize and info.default_pooling == pb.POOLING_MEAN
    assert info.engine == "packed"
    assert info.limits.max_tokens_per_input == 256 and info.limits.max_inputs_per_request == 128


def test_tokenize_gives_ids_and_character_offsets(minilm_client: BertmeshClient) -> None:
    text = "Hello, wonderful world"
    tokens = minilm_client.tokenize([text]).results[0].tokens
    assert [t.text for t in tokens] == ["[CLS]", "hello", ",", "wonderful", "world", "[SEP]"]
    assert tokens[0].special and tokens[-1].special
    assert [text[t.start : t.end] for t in tokens[1:-1]] == ["Hello", ",", "wonderful", "world"]


def test_both_engines_agree_on_the_bundled_model(minilm_client: BertmeshClient, reference: SentenceTransformer) -> None:
    server = ServerThread(config_for(None, "--engine", "transformers")).start()
    try:
        with BertmeshClient(server.target) as padded:
            assert padded.model_info().engine == "transformers"
            theirs = padded.embed(SENTENCES)
    finally:
        server.stop()
    ours = minilm_client.embed(SENTENCES)
    assert cosine_rows(ours, theirs).min() >= 0.9999
    assert cosine_rows(theirs, reference.encode(SENTENCES)).min() >= 0.9999
