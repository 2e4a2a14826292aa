"""Reranking over real gRPC: a tiny cross-encoder against plain transformers (both engines), the bundled MiniLM by
cosine, limits named by field, the label-count refusal, and the ranking helper."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import transformers

from model_server.checkpoint import inspect_checkpoint
from model_server.config import ModelConfig, engine_defaults
from model_server.errors import ConfigError, InvalidArgument
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from model_server.server import load_model
from model_server.tasks import Task
from model_server.tasks.rerank import top
from tests.server import checkpoints
from tests.server.harness import ServerThread, code, config_for, details

QUERY = "where does john live"
DOCUMENTS = [
    "john lives in paris",
    "the weather is really good today",
    "mary works at acme corp in london",
    "john was born in berlin and lives in a big red house by the river",
]
LIMIT = 24  # the short servers' max_tokens_per_input
LONG = " ".join(["the big red house by the river"] * 6)  # over LIMIT with the query


def reference(path: Path, query: str, documents: list[str], max_length: int | None = None) -> tuple[list[float], int]:
    """Each pair's logit from a plain AutoModelForSequenceClassification forward, and the pairs' tokens."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    logits, tokens = [], 0
    with torch.inference_mode():
        for document in documents:  # one pair at a time: no padding in the reference
            cut = {"truncation": "only_second", "max_length": max_length} if max_length else {}
            enc = tokenizer(query, document, return_tensors="pt", **cut)
            assert enc["token_type_ids"].max() == 1  # the pair's second side is typed 1
            logits.append(float(model(**enc).logits[0, 0]))
            tokens += int(enc["input_ids"].shape[1])
    return logits, tokens


def sigmoid(values: list[float]) -> list[float]:
    return [1 / (1 + np.exp(-v)) for v in values]


def rerank(target: str, **fields: Any) -> pb.RerankResponse:
    with grpc.insecure_channel(target) as channel:
        reply: pb.RerankResponse = pb_grpc.InferenceServiceStub(channel).Rerank(pb.RerankRequest(**fields), timeout=30)
    return reply


@pytest.fixture(scope="module", params=["packed", "transformers"])
def short_cross_encoder(tiny_models: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """The tiny cross-encoder with a short token limit, per engine, without a cache."""
    argv = ["--engine", request.param, "--max-tokens-per-input", str(LIMIT), "--cache-entries", "0"]
    server = ServerThread(config_for(tiny_models["rerank"], *argv)).start()
    yield server
    server.stop()


def test_cross_encoder_scores_equal_transformers_on_each_pair(
    tiny_models: dict[str, Path], tiny_servers: dict[str, ServerThread]
) -> None:
    query = "who was born in berlin"  # asked by no other test: nothing of it is in the session server's cache
    logits, tokens = reference(tiny_models["rerank"], query, DOCUMENTS)
    reply = rerank(tiny_servers["rerank"].target, query=query, documents=DOCUMENTS, id="r1")
    assert (reply.method, reply.model, reply.id, reply.usage.tokens) == ("cross-encoder", "rerank", "r1", tokens)
    assert sorted(r.index for r in reply.results) == list(range(len(DOCUMENTS)))
    by_index = {r.index: r for r in reply.results}
    assert np.allclose([by_index[i].raw_score for i in range(len(DOCUMENTS))], logits, atol=1e-4)
    assert np.allclose([by_index[i].relevance_score for i in range(len(DOCUMENTS))], sigmoid(logits), atol=1e-5)
    assert [r.index for r in reply.results] == list(np.argsort(-np.array(logits), kind="stable"))


def test_token_types_reach_the_model(tiny_models: dict[str, Path], tiny_servers: dict[str, ServerThread]) -> None:
    """The pair's document side is typed 1: typing it 0 would give other logits (so the comparison above bites)."""
    path = tiny_models["rerank"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    enc = tokenizer(QUERY, DOCUMENTS[0], return_tensors="pt")
    with torch.inference_mode():
        untyped = float(model(input_ids=enc["input_ids"], token_type_ids=torch.zeros_like(enc["input_ids"])).logits)
    served = rerank(tiny_servers["rerank"].target, query=QUERY, documents=DOCUMENTS[:1]).results[0].raw_score
    assert abs(served - untyped) > 0.05


def test_top_n_and_documents_are_echoed_best_first(tiny_servers: dict[str, ServerThread]) -> None:
    target = tiny_servers["rerank"].target
    full = rerank(target, query=QUERY, documents=DOCUMENTS)
    cut = rerank(target, query=QUERY, documents=DOCUMENTS, top_n=2, return_documents=True)
    assert [r.index for r in cut.results] == [r.index for r in full.results[:2]]
    assert [r.document for r in cut.results] == [DOCUMENTS[r.index] for r in cut.results]
    assert all(r.document == "" for r in full.results)


def test_only_the_document_side_is_truncated(tiny_models: dict[str, Path], short_cross_encoder: ServerThread) -> None:
    documents = [DOCUMENTS[0], LONG]
    logits, tokens = reference(tiny_models["rerank"], QUERY, documents, max_length=LIMIT)
    reply = rerank(short_cross_encoder.target, query=QUERY, documents=documents, truncate=True)
    by_index = {r.index: r.raw_score for r in reply.results}
    assert np.allclose([by_index[0], by_index[1]], logits, atol=1e-4)
    assert reply.usage.tokens == tokens and tokens < LIMIT * 2


def test_pairs_over_the_token_limit_are_refused_naming_the_document(short_cross_encoder: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as err:
        rerank(short_cross_encoder.target, query=QUERY, documents=[DOCUMENTS[0], LONG])
    assert code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err.value).startswith("documents[1]: ") and "query's and the document's together" in details(
        err.value
    )


@pytest.mark.parametrize("truncate", [False, True])
def test_a_query_leaving_no_room_is_refused_naming_the_query(short_cross_encoder: ServerThread, truncate: bool) -> None:
    with pytest.raises(grpc.RpcError) as err:
        rerank(short_cross_encoder.target, query=LONG, documents=DOCUMENTS[:1], truncate=truncate)
    assert code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err.value).startswith("query: ") and f"max_tokens_per_input={LIMIT}" in details(err.value)


@pytest.fixture(scope="module")
def short_embedder(tiny_models: dict[str, Path]) -> Iterator[ServerThread]:
    """The tiny embedding model with a short token limit: it reranks by cosine."""
    argv = ["--max-tokens-per-input", str(LIMIT), "--cache-entries", "0"]
    server = ServerThread(config_for(tiny_models["embedding"], *argv)).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("query", "documents", "field"),
    [(LONG, DOCUMENTS[:1], "query: "), (QUERY, [DOCUMENTS[0], LONG], "documents[1]: ")],
)
def test_cosine_rerank_names_the_text_over_the_token_limit(
    short_embedder: ServerThread, query: str, documents: list[str], field: str
) -> None:
    """The query is one text, named without an index; a document by its index."""
    with pytest.raises(grpc.RpcError) as err:
        rerank(short_embedder.target, query=query, documents=documents)
    assert code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err.value).startswith(field), details(err.value)
    assert f"max_tokens_per_input={LIMIT}" in details(err.value)
    assert "together" not in details(err.value)  # no pair here: each text counts alone


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"query": "", "documents": DOCUMENTS}, "query: "),
        ({"query": QUERY, "documents": []}, "documents: "),
        ({"query": QUERY, "documents": ["john", " "]}, "documents[1]: "),
    ],
)
def test_limits_name_the_field(tiny_servers: dict[str, ServerThread], fields: dict[str, Any], field: str) -> None:
    for task in ("rerank", "embedding"):  # both methods check alike
        with pytest.raises(grpc.RpcError) as err:
            rerank(tiny_servers[task].target, **fields)
        assert code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert details(err.value).startswith(field), details(err.value)


def test_models_of_other_tasks_refuse_rerank(tiny_servers: dict[str, ServerThread]) -> None:
    with pytest.raises(grpc.RpcError) as err:
        rerank(tiny_servers["sequence-classification"].target, query=QUERY, documents=DOCUMENTS)
    assert code(err.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "cross-encoder" in details(err.value)


def test_embedding_models_rerank_by_cosine(minilm_server: ServerThread) -> None:
    documents = [
        "The Eiffel Tower is in Paris.",
        "Bananas are rich in potassium.",
        "Paris is the capital of France.",
    ]
    query = "What is the capital of France?"
    reply = rerank(minilm_server.target, query=query, documents=documents)
    with grpc.insecure_channel(minilm_server.target) as channel:
        embedded = pb_grpc.InferenceServiceStub(channel).Embed(pb.EmbedRequest(inputs=[query, *documents]), timeout=30)
    vectors = np.array([list(e.values) for e in embedded.embeddings])
    cosines = vectors[1:] @ vectors[0]
    by_index = {r.index: r for r in reply.results}
    assert reply.method == "cosine" and reply.results[0].index == 2 and reply.results[-1].index == 1
    assert np.allclose([by_index[i].relevance_score for i in range(3)], cosines, atol=1e-5)
    assert np.allclose([by_index[i].raw_score for i in range(3)], cosines, atol=1e-5)


def test_a_one_output_head_is_detected_as_rerank_and_others_are_refused(tmp_path: Path) -> None:
    one = checkpoints.build(tmp_path / "one", "rerank")
    three = checkpoints.build(tmp_path / "three", "sequence-classification")
    assert inspect_checkpoint(one).task is Task.RERANK
    assert inspect_checkpoint(three).task is Task.SEQUENCE_CLASSIFICATION
    with pytest.raises(ConfigError, match="one output; this head has 3 labels"):
        load_model(ModelConfig(path=three, task=Task.RERANK), engine_defaults())


def test_top_is_best_first_with_ties_in_input_order() -> None:
    scores = [0.1, 0.9, 0.5, 0.9, 0.1]
    assert top(scores, None) == [1, 3, 2, 0, 4]
    assert top(scores, 2) == [1, 3]
    assert top(scores, 0) == []
    assert top(scores, 10) == [1, 3, 2, 0, 4]
    with pytest.raises(InvalidArgument, match="top_n"):
        top(scores, -1)


def test_pairs_are_cached_per_query(tiny_servers: dict[str, ServerThread]) -> None:
    target = tiny_servers["rerank"].target
    documents = ["mary lives in london", "john visited berlin"]
    first = rerank(target, query="who lives in london", documents=documents)
    again = rerank(target, query="who lives in london", documents=documents)
    other = rerank(target, query="who visited berlin", documents=documents)
    assert first.usage.tokens > 0 and again.usage.tokens == 0 and other.usage.tokens > 0
    assert [(r.index, r.raw_score) for r in again.results] == [(r.index, r.raw_score) for r in first.results]
    assert [r.raw_score for r in other.results] != [r.raw_score for r in first.results]
