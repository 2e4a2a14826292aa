"""The real clients, unmodified, against a real `bertmesh serve`: the OpenAI SDK (float and its default
base64), LangChain's OpenAIEmbeddings, and huggingface_hub's InferenceClient (TEI); each equals gRPC."""

from __future__ import annotations

import httpx
import huggingface_hub.constants
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from langchain_openai import OpenAIEmbeddings
from openai import NotFoundError, OpenAI

from model_server.client import BertmeshClient
from model_server.config import bundled_model_path
from model_server.tokenization import TextTokenizer
from tests.http.conftest import MODEL, ServeProcess

TEXTS = [
    "Kubernetes schedules pods onto nodes.",
    "A sentence embedding maps text to a vector.",
    "The cat sat on the mat.",
]
TOLERANCE = 1e-5


def grpc_vectors(process: ServeProcess, texts: list[str]) -> np.ndarray:
    with BertmeshClient(process.grpc_target) as client:
        return client.embed(texts)


@pytest.fixture
def openai_client(minilm_process: ServeProcess) -> OpenAI:
    return OpenAI(base_url=f"{minilm_process.http_url}/v1", api_key="unused", max_retries=0)


def test_openai_sdk_floats_and_its_default_base64_equal_grpc(
    minilm_process: ServeProcess, openai_client: OpenAI
) -> None:
    expected = grpc_vectors(minilm_process, TEXTS)
    floats = openai_client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    default = openai_client.embeddings.create(model=MODEL, input=TEXTS)  # the SDK asks for base64 and decodes it
    for reply in (floats, default):
        assert reply.model == MODEL
        assert [item.index for item in reply.data] == [0, 1, 2]
        got = np.array([item.embedding for item in reply.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > len(TEXTS) * 3


def test_openai_sdk_token_ids_are_the_served_vocabulary(minilm_process: ServeProcess, openai_client: OpenAI) -> None:
    tokenizer = TextTokenizer.from_dir(bundled_model_path())
    # Ids without special tokens, as a client tokenizing for the model sends them; the server adds [CLS]/[SEP].
    ids = [[i for i, special in zip(e.ids, e.special, strict=True) if not special] for e in tokenizer.encode(TEXTS)]
    one = openai_client.embeddings.create(model=MODEL, input=ids[0], encoding_format="float")
    several = openai_client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    expected = grpc_vectors(minilm_process, TEXTS)
    np.testing.assert_allclose(np.array(one.data[0].embedding), expected[0], atol=TOLERANCE)
    np.testing.assert_allclose(np.array([d.embedding for d in several.data]), expected, atol=TOLERANCE)
    assert several.usage.prompt_tokens == sum(len(i) + 2 for i in ids)


def test_openai_sdk_dimensions_truncate_and_renormalise(minilm_process: ServeProcess, openai_client: OpenAI) -> None:
    reply = openai_client.embeddings.create(model=MODEL, input=TEXTS[:1], dimensions=64)
    vector = np.array(reply.data[0].embedding)
    full = grpc_vectors(minilm_process, TEXTS[:1])[0][:64]
    assert vector.shape == (64,)
    np.testing.assert_allclose(vector, full / np.linalg.norm(full), atol=TOLERANCE)


def test_openai_sdk_sees_errors_in_its_own_shape(openai_client: OpenAI) -> None:
    with pytest.raises(NotFoundError) as err:
        openai_client.embeddings.create(model="text-embedding-3-small", input="x")
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"
    assert "this server serves 'all-MiniLM-L6-v2'" in err.value.message
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_langchain_openai_embeddings_with_the_served_tokenizer_equal_grpc(minilm_process: ServeProcess) -> None:
    # LangChain's default length check tokenizes with tiktoken, which downloads OpenAI's BPE files (no network
    # here) and sends OpenAI's token ids; tiktoken_enabled=False makes it count with the served model's own
    # tokenizer (transformers, from the local directory) and send the texts of its chunks.
    embeddings = OpenAIEmbeddings(
        model=MODEL,
        base_url=f"{minilm_process.http_url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=True,
        tiktoken_enabled=False,
        tiktoken_model_name=str(bundled_model_path()),
        embedding_ctx_length=256,
        max_retries=0,
    )
    documents = embeddings.embed_documents(TEXTS)
    query = embeddings.embed_query(TEXTS[0])
    expected = grpc_vectors(minilm_process, [t.lower() for t in TEXTS])  # the uncased tokenizer's decode lowers
    np.testing.assert_allclose(np.array(documents), expected, atol=1e-4)
    np.testing.assert_allclose(np.array(query), expected[0], atol=1e-4)


def test_huggingface_inference_client_feature_extraction_equals_grpc(
    minilm_process: ServeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test session sets HF_HUB_OFFLINE=1 (no model is ever fetched from a hub), and huggingface_hub reads it
    # once, at its first import, which may come before or after: this client only calls the local server.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    client = InferenceClient(model=minilm_process.http_url)
    expected = grpc_vectors(minilm_process, TEXTS[:1])
    vector = client.feature_extraction(TEXTS[0])
    assert vector.shape == (1, 384)
    np.testing.assert_allclose(vector, expected, atol=TOLERANCE)
    short = client.feature_extraction(TEXTS[0], normalize=True, truncate=True, dimensions=32)
    np.testing.assert_allclose(short[0], expected[0][:32] / np.linalg.norm(expected[0][:32]), atol=TOLERANCE)


def test_tei_embed_equals_grpc_and_info_describes_the_model(minilm_process: ServeProcess) -> None:
    with httpx.Client(base_url=minilm_process.http_url, timeout=60) as http:
        vectors = http.post("/embed", json={"inputs": TEXTS}).json()
        info = http.get("/info").json()
        assert http.get("/health").status_code == 200
    np.testing.assert_allclose(np.array(vectors), grpc_vectors(minilm_process, TEXTS), atol=TOLERANCE)
    assert info["model_id"] == MODEL and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["model_dtype"] == "float32" and info["max_input_length"] == 256
    assert info["max_client_batch_size"] == 128 and info["version"]
