"""Rerank over HTTP: the cohere SDK (ClientV2, unmodified) and TEI's /rerank against a real `bertmesh serve`,
equal to the gRPC Rerank; Cohere's v1 document objects; errors in Cohere's shape."""

from __future__ import annotations

import math

import cohere
import grpc
import httpx
import pytest

from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from tests.http.conftest import MODEL, ServeProcess
from tests.server.harness import ServerThread

QUERY = "how do pods get scheduled?"
DOCUMENTS = [
    "The cat sat on the mat.",
    "Kubernetes schedules pods onto nodes that have room for them.",
    "A sentence embedding maps text to a vector.",
]
TOLERANCE = 1e-5


def grpc_scores(process: ServeProcess) -> list[float]:
    """Each document's relevance by the gRPC Rerank RPC, in input order."""
    with grpc.insecure_channel(process.grpc_target) as channel:
        reply = pb_grpc.InferenceServiceStub(channel).Rerank(pb.RerankRequest(query=QUERY, documents=DOCUMENTS))
    return [r.relevance_score for r in sorted(reply.results, key=lambda r: r.index)]


def test_cohere_client_v2_rerank_equals_grpc(minilm_process: ServeProcess) -> None:
    client = cohere.ClientV2(api_key="unused", base_url=minilm_process.http_url)
    reply = client.rerank(model=MODEL, query=QUERY, documents=DOCUMENTS, top_n=2)
    expected = grpc_scores(minilm_process)
    best = sorted(range(3), key=lambda i: -expected[i])[:2]
    assert [r.index for r in reply.results] == best and best[0] == 1  # the Kubernetes sentence is the answer
    assert [r.relevance_score for r in reply.results] == pytest.approx([expected[i] for i in best], abs=TOLERANCE)
    assert reply.meta is not None and reply.meta.billed_units is not None
    assert reply.meta.billed_units.search_units == 1


def test_cohere_v1_takes_document_objects_and_returns_documents(minilm_process: ServeProcess) -> None:
    body = {"model": MODEL, "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "return_documents": True}
    reply = httpx.post(f"{minilm_process.http_url}/v1/rerank", json=body, timeout=60).json()
    assert [r["document"]["text"] for r in reply["results"]] == [DOCUMENTS[r["index"]] for r in reply["results"]]
    assert reply["meta"]["api_version"] == {"version": "1"} and reply["meta"]["method"] == "cosine"
    assert len(reply["results"]) == 3 and reply["id"]


def test_tei_rerank_equals_grpc(minilm_process: ServeProcess) -> None:
    body = {"query": QUERY, "texts": DOCUMENTS, "return_text": True}
    ranks = httpx.post(f"{minilm_process.http_url}/rerank", json=body, timeout=60).json()
    expected = grpc_scores(minilm_process)
    assert [r["index"] for r in ranks] == sorted(range(3), key=lambda i: -expected[i])
    assert [r["score"] for r in ranks] == pytest.approx([expected[r["index"]] for r in ranks], abs=TOLERANCE)
    assert all(r["text"] == DOCUMENTS[r["index"]] for r in ranks)


def test_rerank_errors_in_each_shape(minilm_process: ServeProcess) -> None:
    url = minilm_process.http_url
    unknown = httpx.post(f"{url}/v2/rerank", json={"model": "rerank-v3.5", "query": "q", "documents": ["d"]})
    assert unknown.status_code == 404 and set(unknown.json()) == {"id", "message"}
    negative = httpx.post(f"{url}/v2/rerank", json={"model": MODEL, "query": "q", "documents": ["d"], "top_n": -1})
    assert negative.status_code == 400 and "top_n" in negative.json()["message"]
    empty = httpx.post(f"{url}/rerank", json={"query": "q", "texts": []})
    assert empty.status_code == 400 and empty.json()["error_type"] == "Empty"
    with pytest.raises(cohere.NotFoundError):
        cohere.ClientV2(api_key="unused", base_url=url).rerank(model="rerank-v3.5", query="q", documents=["d"])


def test_cross_encoder_scores_pairs_over_both_apis(tiny_http: dict[str, ServerThread]) -> None:
    """A cross-encoder's Cohere score is the sigmoid of the logit TEI returns as its raw score, equal to gRPC's."""
    server = tiny_http["rerank"]
    with grpc.insecure_channel(server.target) as channel:
        reply = pb_grpc.InferenceServiceStub(channel).Rerank(pb.RerankRequest(query=QUERY, documents=DOCUMENTS))
    logits = {r.index: r.raw_score for r in reply.results}
    cohere_reply = httpx.post(f"{server.http_url}/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()
    assert cohere_reply["meta"]["method"] == "cross-encoder"
    for result in cohere_reply["results"]:
        assert result["relevance_score"] == pytest.approx(1 / (1 + math.exp(-logits[result["index"]])), abs=TOLERANCE)
    raw = httpx.post(f"{server.http_url}/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    assert [r["index"] for r in raw] == [r["index"] for r in cohere_reply["results"]]
    assert [r["score"] for r in raw] == pytest.approx([logits[r["index"]] for r in raw], abs=TOLERANCE)


def test_long_documents_cut_by_cohere_refused_by_tei_unless_truncate(http: httpx.Client) -> None:
    """Cohere cuts a document over the token limit; TEI refuses it (413, naming the text) unless `truncate`."""
    long = " ".join(["word"] * 2000)
    cohere_reply = http.post("/v2/rerank", json={"query": "q", "documents": ["short", long]})
    assert cohere_reply.status_code == 200 and len(cohere_reply.json()["results"]) == 2
    refused = http.post("/rerank", json={"query": "q", "texts": ["short", long]})
    assert refused.status_code == 413 and "texts[1]" in refused.json()["error"], refused.json()
    assert http.post("/rerank", json={"query": "q", "texts": ["short", long], "truncate": True}).status_code == 200
