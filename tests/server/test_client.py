"""The Python client against real servers: more inputs than a request may carry, split when asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from model_server import client_cli
from model_server.client import BertmeshClient, split_inputs
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from tests.server.harness import ServerThread, config_for

LIMIT = 2
SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
TEXTS = ["the first text", "a second one", "third", "and a fourth text here", "five"]


@pytest.fixture(scope="module")
def limited_servers(tiny_models: dict[str, Path]) -> Iterator[dict[str, ServerThread]]:
    """A server per task that takes at most LIMIT inputs per request."""
    servers = {
        task: ServerThread(config_for(path, "--max-inputs-per-request", str(LIMIT))).start()
        for task, path in tiny_models.items()
    }
    yield servers
    for server in servers.values():
        server.stop()


def test_split_inputs_keeps_order_and_bounds_every_slice() -> None:
    assert split_inputs(TEXTS, 2) == [TEXTS[0:2], TEXTS[2:4], TEXTS[4:5]]
    assert split_inputs(TEXTS, 5) == [TEXTS]
    assert split_inputs(TEXTS, 0) == [TEXTS]


def test_without_splitting_the_server_refuses_more_than_its_limit(limited_servers: dict[str, ServerThread]) -> None:
    with BertmeshClient(limited_servers["embedding"].target) as client, pytest.raises(grpc.RpcError) as refused:
        client.embed(TEXTS)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_split_requests_answer_every_input_in_order(limited_servers: dict[str, ServerThread]) -> None:
    def one_by_one_and_split(task: str) -> tuple[BertmeshClient, BertmeshClient]:
        target = limited_servers[task].target
        return BertmeshClient(target), BertmeshClient(target, split_requests=True)

    single, split = one_by_one_and_split("embedding")
    with single, split:
        vectors = split.embed(TEXTS)
        assert vectors.shape[0] == len(TEXTS)
        np.testing.assert_allclose(vectors, np.concatenate([single.embed([t]) for t in TEXTS]), atol=1e-5)
        assert [list(r.tokens) for r in split.tokenize(TEXTS).results] == [
            list(single.tokenize([t]).results[0].tokens) for t in TEXTS
        ]
    single, split = one_by_one_and_split("sequence-classification")
    with single, split:
        assert [[s.label for s in r] for r in split.classify(TEXTS, top_k=0)] == [
            [s.label for s in single.classify([t], top_k=0)[0]] for t in TEXTS
        ]
    single, split = one_by_one_and_split("token-classification")
    with single, split:
        assert [[(e.label, e.start) for e in r] for r in split.classify_tokens(TEXTS, aggregation="none")] == [
            [(e.label, e.start) for e in single.classify_tokens([t], aggregation="none")[0]] for t in TEXTS
        ]
    single, split = one_by_one_and_split("fill-mask")
    with single, split:
        masked = [f"{t} {single.model_info().mask_token}" for t in TEXTS]
        assert [[[c.token for c in m] for m in r] for r in split.fill_mask(masked)] == [
            [[c.token for c in m] for m in single.fill_mask([t])[0]] for t in masked
        ]


def cli_records(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    """What `bertmesh ARGV` prints, one record per line."""
    assert client_cli.main(list(argv), environ={}) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_every_rpc_has_a_command_whose_records_match_the_client(
    limited_servers: dict[str, ServerThread], capsys: pytest.CaptureFixture[str]
) -> None:
    # More inputs than the servers take: the commands split them as the client does when asked.
    target = limited_servers["token-classification"].target
    with BertmeshClient(target, split_requests=True) as client:
        printed = cli_records(capsys, "classify-tokens", *TEXTS, "--aggregation", "none", "--target", target)
        expected = client.classify_tokens(TEXTS, aggregation="none")
    assert [r["text"] for r in printed] == TEXTS
    assert [[(e["label"], e["start"], e["end"]) for e in r["entities"]] for r in printed] == [
        [(e.label, e.start, e.end) for e in entities] for entities in expected
    ]
    target = limited_servers["fill-mask"].target
    with BertmeshClient(target, split_requests=True) as client:
        masked = [f"{t} {client.model_info().mask_token}" for t in TEXTS]
        printed = cli_records(capsys, "fill-mask", *masked, "--top-k", "3", "--target", target)
        expected_masks = client.fill_mask(masked, top_k=3)
    assert [[[c["token"] for c in m] for m in r["masks"]] for r in printed] == [
        [[c.token for c in m] for m in r] for r in expected_masks
    ]
    target = limited_servers["embedding"].target
    with BertmeshClient(target, split_requests=True) as client:
        printed = cli_records(capsys, "tokenize", *TEXTS, "--target", target)
        tokenized = client.tokenize(TEXTS).results
    assert [[(t["id"], t["text"], t["special"]) for t in r["tokens"]] for r in printed] == [
        [(t.id, t.text, t.special) for t in r.tokens] for r in tokenized
    ]
    assert printed[0]["tokens"][0]["special"] is True


def test_extra_metadata_rides_on_every_call() -> None:
    """What reaches a canary through its header pin (`x-bertmesh-track: canary` at the mesh)."""
    seen: list[dict[str, str | bytes]] = []

    def embed(request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        seen.append(dict(context.invocation_metadata()))
        return pb.EmbedResponse(dimensions=3)

    handler = grpc.unary_unary_rpc_method_handler(
        embed, request_deserializer=pb.EmbedRequest.FromString, response_serializer=pb.EmbedResponse.SerializeToString
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"Embed": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        pinned = [("x-bertmesh-track", "canary")]
        with BertmeshClient(f"127.0.0.1:{port}", metadata=pinned, token="t0ken") as client:
            assert client.embed(["one"]).shape == (0, 3)
            client.embed(["two"])
        with BertmeshClient(f"127.0.0.1:{port}") as plain:
            plain.embed(["three"])
    finally:
        server.stop(None)
    assert [(m.get("x-bertmesh-track"), m.get("authorization")) for m in seen] == [
        ("canary", "Bearer t0ken"),
        ("canary", "Bearer t0ken"),
        (None, None),
    ]
