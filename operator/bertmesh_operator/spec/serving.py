"""What a track serves: the model (location, task, version) and the runtime the server runs it with.

Together these two make the serving spec whose hash is a track's revision: a change to either goes out as a
canary, while resources and autoscaling changes apply to the running tracks in place.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from bertmesh_operator.schema import DNS1123_SUBDOMAIN, IMAGE, CelRule, CrdModel

DEFAULT_IMAGE = "ghcr.io/bertmesh/model-server:0.1.0"
REVISION_LENGTH = 10
# A derived embedding space is "auto:<hash>": the colon cannot occur in a declared one, so the two never match.
DERIVED_SPACE_PREFIX = "auto:"

Task = Literal["auto", "embedding", "sequence-classification", "token-classification", "fill-mask", "rerank"]
Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]

_CLAIM = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
STORAGE_URI = (
    rf"^(pvc://{_CLAIM}(/[^\s]*)?"
    r"|(s3|gs)://[a-z0-9][-a-z0-9._]{1,220}[a-z0-9](/[^\s]*)?"
    r"|https://[^\s/?#]+(/[^\s]*)?)$"
)
_PVC_PARENT = r"^pvc://.*/\.\.(/|$)"
StorageUri = Annotated[
    str,
    Field(
        min_length=7,
        max_length=1024,
        pattern=STORAGE_URI,
        description="Where the model lives: pvc://<claim>[/<path>] (mounted read-only), or s3://, gs://, "
        "https:// (downloaded by a storage-initializer init container). A Hugging Face-format directory.",
    ),
]
ModelRevision = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="The model's version as the server reports it (--revision) and as pods are labelled "
        "(app.kubernetes.io/version). Default: the serving revision hash.",
    ),
]
EmbeddingSpace = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$",
        description="The vector space the model writes: two tracks in one space give interchangeable vectors "
        "(the same model re-quantised or on a new image), two spaces never share traffic by weight. "
        "Default: derived from storageUri and revision, so two different models never match by accident.",
    ),
]


def derived_space(storage_uri: str, revision: str | None) -> str:
    """The embedding space of a model that declares none: a hash of its location and version."""
    digest = hashlib.sha256(f"{storage_uri}\n{revision or ''}".encode()).hexdigest()[:12]
    return DERIVED_SPACE_PREFIX + digest


def _no_parent_segment(uri: str | None) -> bool:
    return uri is None or re.search(_PVC_PARENT, uri) is None


def _secret_needs_download(uri: str | None, secret: str | None) -> bool:
    return secret is None or uri is None or not uri.startswith("pvc://")


_MODEL_RULES = (
    CelRule(
        rule="!has(self.storageUri) || !self.storageUri.matches('^pvc://.*/\\\\.\\\\.(/|$)')",
        message="storageUri: a pvc:// path must not contain '..'",
        check=lambda m: _no_parent_segment(m.storage_uri),
        field_path=".storageUri",
    ),
    CelRule(
        rule="!has(self.secretName) || !has(self.storageUri) || !self.storageUri.startsWith('pvc://')",
        message="secretName is for s3://, gs:// and https:// downloads; a pvc:// model needs no credentials",
        check=lambda m: _secret_needs_download(m.storage_uri, m.secret_name),
        field_path=".secretName",
    ),
)
SecretName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="Secret whose keys become environment variables of the storage initializer only "
        "(e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL). Default: none.",
    ),
]


class ModelSpec(CrdModel):
    """Which model to serve: its location, task and version."""

    cel_rules = _MODEL_RULES

    storage_uri: StorageUri
    task: Task = Field(default="auto", description="The server's task; auto reads config.json. Default: auto.")
    revision: ModelRevision | None = None
    secret_name: SecretName | None = None
    embedding_space: EmbeddingSpace | None = None

    @property
    def effective_embedding_space(self) -> str:
        """The declared embedding space, or the one derived from storageUri and revision."""
        return self.embedding_space or derived_space(self.storage_uri, self.revision)


class _Override(CrdModel):
    """Base of the canary overrides: all fields optional, at least one set (`minProperties: 1` in the CRD)."""

    model_config = CrdModel.model_config | ConfigDict(json_schema_extra={"minProperties": 1})

    @model_validator(mode="after")
    def _not_empty(self) -> _Override:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("an override must set at least one field")
        return self


class ModelOverride(_Override):
    """Canary overrides of `model`; a new storageUri or revision also resets what describes the old model."""

    cel_rules = _MODEL_RULES

    storage_uri: StorageUri | None = None
    task: Task | None = None
    revision: ModelRevision | None = None
    secret_name: SecretName | None = None
    embedding_space: EmbeddingSpace | None = None


def _batch_fits(r: RuntimeSpec) -> bool:
    return r.max_tokens_per_input <= r.max_batch_tokens


class RuntimeSpec(CrdModel):
    """How the bertmesh server runs the model: image, precision, batching and request limits."""

    cel_rules = (
        CelRule(
            rule="self.maxQueuedTokens >= self.maxBatchTokens",
            message="maxQueuedTokens must be at least maxBatchTokens (a full batch must fit in the queue)",
            check=lambda r: r.max_queued_tokens >= r.max_batch_tokens,
            field_path=".maxQueuedTokens",
        ),
        CelRule(
            rule="self.maxTokensPerInput <= self.maxBatchTokens",
            message="maxTokensPerInput must not exceed maxBatchTokens (one input must fit in a batch)",
            check=_batch_fits,
            field_path=".maxTokensPerInput",
        ),
    )

    image: str = Field(
        default=DEFAULT_IMAGE,
        min_length=1,
        max_length=512,
        pattern=IMAGE,
        description=f"The bertmesh model-server image. Default: {DEFAULT_IMAGE}.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Default: IfNotPresent."
    )
    precision: Precision = Field(
        default="auto",
        description="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16 (GPU only), int8 (CPU only). Default: auto.",
    )
    max_batch_tokens: int = Field(
        default=16384, ge=1, le=1048576, description="Token budget of one batch. Default: 16384."
    )
    max_batch_requests: int = Field(default=64, ge=1, le=4096, description="Requests per batch. Default: 64.")
    max_batch_delay_ms: float = Field(
        default=5.0, ge=0, le=1000, description="Longest wait to fill a batch, in ms. Default: 5."
    )
    max_queued_tokens: int = Field(
        default=262144,
        ge=1,
        le=67108864,
        description="Queued tokens beyond which requests are shed with RESOURCE_EXHAUSTED. Default: 262144.",
    )
    max_inputs_per_request: int = Field(default=64, ge=1, le=4096, description="Default: 64.")
    max_chars_per_input: int = Field(default=20000, ge=1, le=1000000, description="Default: 20000.")
    max_tokens_per_input: int = Field(
        default=512,
        ge=1,
        le=8192,
        description="Longer inputs are refused with INVALID_ARGUMENT. Default: 512.",
    )
    max_message_bytes: int = Field(
        default=4194304, ge=1024, le=67108864, description="Largest gRPC message. Default: 4194304 (4 MiB)."
    )
    cache_entries: int = Field(
        default=10000, ge=0, le=10000000, description="Result-cache entries; 0 disables. Default: 10000."
    )
    grace_seconds: int = Field(
        default=20,
        ge=1,
        le=600,
        description="Drain time after SIGTERM; the pod's terminationGracePeriodSeconds adds a margin. Default: 20.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Intra-op CPU threads. Default: resources.cpu rounded up (torch would otherwise use "
        "every core of the node, not the container's share).",
    )


class RuntimeOverride(_Override):
    """Canary overrides of `runtime`: only the fields set here differ from the stable runtime."""

    image: str | None = Field(default=None, min_length=1, max_length=512, pattern=IMAGE)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    precision: Precision | None = None
    max_batch_tokens: int | None = Field(default=None, ge=1, le=1048576)
    max_batch_requests: int | None = Field(default=None, ge=1, le=4096)
    max_batch_delay_ms: float | None = Field(default=None, ge=0, le=1000)
    max_queued_tokens: int | None = Field(default=None, ge=1, le=67108864)
    max_inputs_per_request: int | None = Field(default=None, ge=1, le=4096)
    max_chars_per_input: int | None = Field(default=None, ge=1, le=1000000)
    max_tokens_per_input: int | None = Field(default=None, ge=1, le=8192)
    max_message_bytes: int | None = Field(default=None, ge=1024, le=67108864)
    cache_entries: int | None = Field(default=None, ge=0, le=10000000)
    grace_seconds: int | None = Field(default=None, ge=1, le=600)
    threads: int | None = Field(default=None, ge=1, le=256)


class ServingSpec(CrdModel):
    """The model and runtime one track serves; the hash of the two is the track's revision."""

    model: ModelSpec
    runtime: RuntimeSpec = Field(default=RuntimeSpec())

    @property
    def revision(self) -> str:
        """A short, stable hash of everything the server is started with (defaults included)."""
        canonical = json.dumps(self.wire(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_LENGTH]

    def with_overrides(self, model: ModelOverride | None, runtime: RuntimeOverride | None) -> ServingSpec:
        """Return this spec with the fields set in the overrides replaced (validated again as a whole)."""
        merged = self.wire()
        if model is not None:
            if model.storage_uri is not None:
                # Another location is another model: the stable model's credentials and version label
                # do not describe it.
                merged["model"].pop("secretName", None)
                merged["model"].pop("revision", None)
            if model.storage_uri is not None or model.revision is not None:
                # Nor does the stable model's declared space: another model writes another space unless the
                # override says otherwise.
                merged["model"].pop("embeddingSpace", None)
            merged["model"] |= model.wire()
        if runtime is not None:
            merged["runtime"] |= runtime.wire()
        return ServingSpec.model_validate(merged)
