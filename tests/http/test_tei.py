"""text-embeddings-inference's /predict and /tokenize in TEI's shapes, equal to gRPC's Classify and Tokenize."""

from __future__ import annotations

import httpx
import numpy as np

from model_server.client import BertmeshClient
from tests.server.harness import ServerThread


def test_predict_single_and_batch_in_teis_shape_equal_grpc(tiny_http: dict[str, ServerThread]) -> None:
    server = tiny_http["sequence-classification"]
    texts = ["the cat sat", "a dog ran far"]
    with BertmeshClient(server.target) as client:
        expected = client.classify(texts)
    with httpx.Client(base_url=server.http_url, timeout=60) as http:
        single = http.post("/predict", json={"inputs": texts[0]}).json()
        batch = http.post("/predict", json={"inputs": [[t] for t in texts]}).json()
        raw = http.post("/predict", json={"inputs": texts[0], "raw_scores": True}).json()
        root = http.post("/", json={"inputs": texts[0]}).json()
        info = http.get("/info").json()
    assert root == single
    for got, want in zip([single, *batch], [expected[0], *expected], strict=True):
        assert [p["label"] for p in got] == [s.label for s in want]  # every label, best first
        np.testing.assert_allclose([p["score"] for p in got], [s.score for s in want], atol=1e-6)
    # Raw scores are logits: the same order, and their softmax is the probabilities.
    logits = np.array([p["score"] for p in raw])
    assert [p["label"] for p in raw] == [p["label"] for p in single]
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), [p["score"] for p in single], atol=1e-5)
    labels = info["model_type"]["classifier"]
    assert labels["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert labels["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}


def test_tokenize_in_teis_shape_equals_grpc(http: httpx.Client, tiny_http: dict[str, ServerThread]) -> None:
    text = "the cat sat"
    with BertmeshClient(tiny_http["embedding"].target) as client:
        tokens = client.tokenize([text]).results[0].tokens
    [got] = http.post("/tokenize", json={"inputs": text}).json()
    assert [t["id"] for t in got] == [t.id for t in tokens]
    assert [t["special"] for t in got] == [t.special for t in tokens]
    first, word = got[0], got[1]
    assert first["special"] and first["start"] is None and first["stop"] is None
    assert text[word["start"] : word["stop"]] == word["text"] and not word["special"]
    [plain] = http.post("/tokenize", json={"inputs": [text], "add_special_tokens": False}).json()
    assert plain == [t for t in got if not t["special"]]
