"""Every task over real gRPC on tiny random checkpoints, compared with plain transformers on the same files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import transformers

from model_server.client import BertmeshClient
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from tests.server.harness import ServerThread, details

TEXTS = [
    "john lives in paris",
    "mary works at acme corp in london today",
    "the weather is really good",
    "berlin",
    "the big red house by the river was built a very long time ago by john",
]


def reference_outputs(path: Path, model_class: Any, texts: list[str]) -> list[np.ndarray]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    model = model_class.from_pretrained(str(path)).eval()
    out = []
    with torch.inference_mode():
        for text in texts:  # one at a time: no padding in the reference
            enc = tokenizer(text, return_tensors="pt")
            out.append(model(**enc).logits[0].numpy())
    return out


def client(servers: dict[str, ServerThread], task: str) -> BertmeshClient:
    return BertmeshClient(servers[task].target)


def test_sequence_classification_matches_transformers(
    tiny_models: dict[str, Path], tiny_servers: dict[str, ServerThread]
) -> None:
    path = tiny_models["sequence-classification"]
    expected = reference_outputs(path, transformers.BertForSequenceClassification, TEXTS)
    with grpc.insecure_channel(tiny_servers["sequence-classification"].target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        reply = stub.Classify(pb.ClassifyRequest(inputs=TEXTS, return_logits=True, top_k=2), timeout=30)
    for result, logits in zip(reply.results, expected, strict=True):
        assert np.allclose(result.logits, logits, atol=1e-4)
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        best = np.argsort(-probs)[:2]
        assert [s.index for s in result.labels] == list(best)
        assert [s.label for s in result.labels] == [["negative", "neutral", "positive"][i] for i in best]
        assert np.allclose([s.score for s in result.labels], probs[best], atol=1e-5)


def test_token_classification_logits_and_entities_match_the_pipeline(
    tiny_models: dict[str, Path], tiny_servers: dict[str, ServerThread]
) -> None:
    path = tiny_models["token-classification"]
    pipeline: Any = transformers.pipeline("token-classification", model=str(path), device="cpu")
    with client(tiny_servers, "token-classification") as c:
        for strategy in ("none", "simple", "first", "average", "max"):
            ours = c.classify_tokens(TEXTS, aggregation=strategy)
            theirs = pipeline(TEXTS, aggregation_strategy=strategy)
            for text, our_entities, their_entities in zip(TEXTS, ours, theirs, strict=True):
                assert [(e.start, e.end) for e in our_entities] == [(e["start"], e["end"]) for e in their_entities]
                key = "entity" if strategy == "none" else "entity_group"
                assert [e.label for e in our_entities] == [e[key] for e in their_entities], strategy
                assert np.allclose([e.score for e in our_entities], [e["score"] for e in their_entities], atol=1e-5)
                assert all(e.text == text[e.start : e.end] for e in our_entities)


def test_fill_mask_matches_transformers(tiny_models: dict[str, Path], tiny_servers: dict[str, ServerThread]) -> None:
    path = tiny_models["fill-mask"]
    texts = ["john lives in [MASK]", "the [MASK] is [MASK] today"]
    expected = reference_outputs(path, transformers.BertForMaskedLM, texts)
    tokenizer: Any = transformers.AutoTokenizer.from_pretrained(str(path))
    with client(tiny_servers, "fill-mask") as c:
        ours = c.fill_mask(texts, top_k=3)
    for text, masks, logits in zip(texts, ours, expected, strict=True):
        ids = tokenizer(text)["input_ids"]
        positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
        assert len(masks) == len(positions)
        for candidates, pos in zip(masks, positions, strict=True):
            row = logits[pos]
            probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
            top = np.argsort(-probs)[:3]
            assert [c.token_id for c in candidates] == list(top)
            assert np.allclose([c.score for c in candidates], probs[top], atol=1e-5)
            assert [c.token for c in candidates] == [tokenizer.decode([t]).strip() for t in top]


def test_embedding_of_a_plain_bert_matches_mean_pooling(
    tiny_models: dict[str, Path], tiny_servers: dict[str, ServerThread]
) -> None:
    path = tiny_models["embedding"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    model: Any = transformers.BertModel.from_pretrained(str(path))
    model.train(False)
    with torch.inference_mode():
        expected = [model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0].mean(0).numpy() for t in TEXTS]
    with client(tiny_servers, "embedding") as c:
        info = c.model_info()
        assert not info.default_normalize  # no sentence-transformers Normalize module
        ours = c.embed(TEXTS)
    assert np.allclose(ours, np.stack(expected), atol=1e-4)


@pytest.mark.parametrize(
    ("task", "call"),
    [
        ("embedding", lambda s: s.Classify(pb.ClassifyRequest(inputs=["x"]), timeout=10)),
        ("sequence-classification", lambda s: s.Embed(pb.EmbedRequest(inputs=["x"]), timeout=10)),
        ("fill-mask", lambda s: s.ClassifyTokens(pb.ClassifyTokensRequest(inputs=["x"]), timeout=10)),
        ("token-classification", lambda s: s.FillMask(pb.FillMaskRequest(inputs=["x [MASK]"]), timeout=10)),
    ],
)
def test_a_task_the_model_does_not_do_is_a_failed_precondition(
    tiny_servers: dict[str, ServerThread], task: str, call: object
) -> None:
    with grpc.insecure_channel(tiny_servers[task].target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            call(stub)  # type: ignore[operator]
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    article = "an" if task == "embedding" else "a"
    assert f"is {article} {task} model" in details(err.value)
    assert " a embedding" not in details(err.value)
