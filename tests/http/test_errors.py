"""Every error an HTTP route answers: its status and its body in the route's API shape (OpenAI's or TEI's)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_server.errors import BackendFailure
from model_server.http.errors import Api, http_error
from tests.server.harness import ServerThread, config_for

LONG = " ".join(["transformers weigh every token against every other token"] * 18)  # ~150 tokens


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The error object of an OpenAI-shaped answer, after checking its status and keys."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error: dict[str, Any] = body["error"]
    return error


def tei_error(response: httpx.Response, status: int, error_type: str) -> str:
    """The message of a TEI-shaped answer, after checking its status, keys and error_type."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    message: str = body["error"]
    return message


def test_openai_400_names_the_field(http: httpx.Client) -> None:
    empty = openai_error(http.post("/v1/embeddings", json={"input": ["ok", " "], "model": ""}), 400)
    assert empty["param"] == "input[1]" and empty["type"] == "invalid_request_error"
    many = openai_error(http.post("/v1/embeddings", json={"input": ["a"] * 5, "model": ""}), 400)
    assert "5 inputs exceed max_inputs_per_request=4" in many["message"] and many["param"] == "input"
    shape = openai_error(http.post("/v1/embeddings", json={"input": 3, "model": ""}), 400)
    assert shape["param"] == "input"
    wide = openai_error(http.post("/v1/embeddings", json={"input": "a", "model": "", "dimensions": 100_000}), 400)
    assert wide["param"] == "dimensions" and "outside 1..32" in wide["message"]
    ids = openai_error(http.post("/v1/embeddings", json={"input": [1, 10**6], "model": ""}), 400)
    assert "token id 1000000 is outside the vocabulary" in ids["message"] and ids["param"] == "input[0]"


def test_openai_400_for_another_task(tiny_http: dict[str, ServerThread]) -> None:
    url = tiny_http["sequence-classification"].http_url
    error = openai_error(httpx.post(f"{url}/v1/embeddings", json={"input": "a", "model": ""}), 400)
    assert "needs an embedding model" in error["message"] and "a sequence-classification model" in error["message"]


def test_openai_404_for_another_model_or_route(http: httpx.Client) -> None:
    error = openai_error(http.post("/v1/embeddings", json={"input": "a", "model": "text-embedding-3-small"}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert openai_error(http.get("/v1/models/text-embedding-3-small"), 404)["code"] == "model_not_found"
    assert http.get("/v1/models/embedding").json()["id"] == "embedding"
    openai_error(http.post("/v1/nothing-here", json={}), 404)


def test_openai_504_when_the_timeout_header_has_passed(http: httpx.Client) -> None:
    reply = http.post("/v1/embeddings", json={"input": "a", "model": ""}, headers={"x-request-timeout": "1e-9"})
    assert openai_error(reply, 504)["code"] == "deadline_exceeded"
    bad = http.post("/v1/embeddings", json={"input": "a", "model": ""}, headers={"x-request-timeout": "soon"})
    assert openai_error(bad, 400)["param"] == "x-request-timeout"


def test_tei_413_for_too_many_or_too_long_inputs(http: httpx.Client) -> None:
    assert "exceed max_inputs_per_request=4" in tei_error(
        http.post("/embed", json={"inputs": ["a"] * 5}), 413, "Validation"
    )
    message = tei_error(http.post("/embed", json={"inputs": LONG * 4}), 413, "Validation")
    assert "exceed max_tokens_per_input" in message
    assert http.post("/embed", json={"inputs": LONG * 4, "truncate": True}).status_code == 200


def test_tei_400_for_empty_and_422_for_invalid_requests(http: httpx.Client, tiny_http: dict[str, ServerThread]) -> None:
    tei_error(http.post("/embed", json={"inputs": ""}), 400, "Empty")
    tei_error(http.post("/embed", json={"inputs": 3}), 422, "Validation")
    left = tei_error(http.post("/embed", json={"inputs": "a", "truncation_direction": "Left"}), 422, "Validation")
    assert "inputs are cut on the right" in left
    tei_error(http.post("/embed", json={"inputs": "a", "prompt_name": "query"}), 422, "Validation")
    tei_error(http.post("/", json={"input": "a"}), 422, "Validation")
    classifier = tiny_http["sequence-classification"].http_url
    pair = httpx.post(f"{classifier}/predict", json={"inputs": ["a", "b"]})
    assert "sentence pairs are not supported" in tei_error(pair, 422, "Validation")
    tei_error(http.post("/predict", json={"inputs": "a"}), 400, "Validation")  # an embedding model


def test_tei_424_for_a_model_failure() -> None:
    # A batch the engine fails on cannot be caused by a request; the mapping is checked on its own.
    error = http_error(BackendFailure("the model failed on a batch"), Api.TEI)
    assert (error.status, error.body["error_type"]) == (424, "Backend")
    assert http_error(BackendFailure("x"), Api.OPENAI).status == 500


@pytest.fixture(scope="module")
def guarded(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """Bearer tokens on, and a small body limit."""
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text("# callers\nsecret-one\n")
    config = config_for(
        tiny_models["embedding"], "--auth-token-file", str(tokens), "--max-message-bytes", "2048", http=True
    )
    server = ServerThread(config).start()
    yield server
    server.stop()


def test_401_without_a_known_bearer_token_in_each_shape(guarded: ServerThread) -> None:
    url = guarded.http_url
    body = {"input": "a", "model": ""}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic secret-one"}):
        error = openai_error(httpx.post(f"{url}/v1/embeddings", json=body, headers=headers), 401)
        assert error["code"] == "invalid_api_key"
    tei = httpx.post(f"{url}/embed", json={"inputs": "a"})
    assert "Authorization: Bearer <token>" in tei_error(tei, 401, "Unhealthy")
    assert tei.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/health").status_code == 200  # probes carry no token
    ok = httpx.post(f"{url}/v1/embeddings", json=body, headers={"authorization": "Bearer secret-one"})
    assert ok.status_code == 200


def test_413_for_a_body_over_max_message_bytes(guarded: ServerThread) -> None:
    auth = {"authorization": "Bearer secret-one"}
    big = {"input": ["word " * 600], "model": ""}
    error = openai_error(httpx.post(f"{guarded.http_url}/v1/embeddings", json=big, headers=auth), 413)
    assert "exceed max_message_bytes=2048" in error["message"]
    tei = httpx.post(f"{guarded.http_url}/embed", json={"inputs": ["word " * 600]}, headers=auth)
    tei_error(tei, 413, "Validation")


@pytest.fixture(scope="module")
def small_queue() -> Iterator[ServerThread]:
    """The bundled model with admission bounded to one full request's tokens (as tests/server/test_load.py)."""
    config = config_for(
        None,
        *("--max-inputs-per-request", "8", "--max-tokens-per-input", "256", "--max-batch-tokens", "256"),
        *("--max-queued-tokens", "2048", "--cache-entries", "0"),
        http=True,
    )
    server = ServerThread(config).start()
    yield server
    server.stop()


async def _burst(url: str, path: str, body: Any, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=None)) as client:
        return await asyncio.gather(*(client.post(path, json=body(i)) for i in range(count)))


def test_429_with_retry_after_when_the_queue_is_full(small_queue: ServerThread) -> None:
    def texts(i: int) -> list[str]:
        return [f"{i} {j} {LONG}" for j in range(8)]

    openai = asyncio.run(_burst(small_queue.http_url, "/v1/embeddings", lambda i: {"input": texts(i), "model": ""}, 40))
    tei = asyncio.run(_burst(small_queue.http_url, "/embed", lambda i: {"inputs": texts(i + 100)}, 40))
    for replies, shape in ((openai, "openai"), (tei, "tei")):
        shed = [r for r in replies if r.status_code == 429]
        assert shed and len(shed) < len(replies), [r.status_code for r in replies]
        assert all(r.status_code in (200, 429) for r in replies)
        for reply in shed:
            assert reply.headers["retry-after"] == "1"
            if shape == "openai":
                assert openai_error(reply, 429)["code"] == "rate_limit_exceeded"
            else:
                assert "retry with backoff" in tei_error(reply, 429, "Overloaded")
