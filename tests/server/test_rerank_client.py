"""The SDK's `rerank` and `bertmesh rerank` against real servers over real sockets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_server import client_cli
from model_server.client import BertmeshClient
from tests.server.harness import ServerThread, config_for

QUERY = "where does john live"
DOCUMENTS = [
    "john lives in paris",
    "the weather is really good today",
    "mary works at acme corp in london",
    "john was born in berlin",
    "the cat and the dog",
]


def test_the_sdk_ranks_best_first_and_echoes_documents(tiny_servers: dict[str, ServerThread]) -> None:
    with BertmeshClient(tiny_servers["rerank"].target) as client:
        every = client.rerank(QUERY, DOCUMENTS)
        best = client.rerank(QUERY, DOCUMENTS, top_n=2, return_documents=True)
    assert every.method == "cross-encoder" and every.tokens > 0
    assert sorted(r.index for r in every.results) == list(range(len(DOCUMENTS)))
    assert [r.score for r in every.results] == sorted((r.score for r in every.results), reverse=True)
    assert [(r.index, r.document) for r in best.results] == [(r.index, DOCUMENTS[r.index]) for r in every.results[:2]]


def test_split_requests_rank_across_requests_like_one(
    tiny_models: dict[str, Path], tiny_servers: dict[str, ServerThread]
) -> None:
    """A server taking two documents per request ranks five in three requests, merged as one request would."""
    small = ServerThread(config_for(tiny_models["rerank"], "--max-inputs-per-request", "2")).start()
    try:
        with BertmeshClient(tiny_servers["rerank"].target) as whole:
            expected = whole.rerank(QUERY, DOCUMENTS, top_n=4)
        with BertmeshClient(small.target, split_requests=True) as split:
            found = split.rerank(QUERY, DOCUMENTS, top_n=4)
    finally:
        small.stop()
    assert [r.index for r in found.results] == [r.index for r in expected.results]
    assert [r.score for r in found.results] == pytest.approx([r.score for r in expected.results], abs=1e-5)


def test_the_cli_prints_one_line_per_ranked_document(
    minilm_server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    documents = ["Bananas are yellow fruit.", "Paris is the capital of France.", "Cats sleep a lot."]
    argv = ["rerank", "--target", minilm_server.target, "--top-n", "2", "capital city of France", *documents]
    assert client_cli.main(argv, environ={}) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["rank"], line["method"]) for line in lines] == [(1, "cosine"), (2, "cosine")]
    assert lines[0]["index"] == 1 and lines[0]["document"] == documents[1]
    assert lines[0]["score"] >= lines[1]["score"]
    assert client_cli.main([*argv[:5], "--format", "json", argv[5], *documents], environ={}) == 0
    assert [r["index"] for r in json.loads(capsys.readouterr().out)] == [line["index"] for line in lines]
