"""Domain errors as HTTP answers, in the shape of the API the route belongs to (pure mapping, no I/O).

OpenAI's routes answer `{"error": {"message", "type", "param", "code"}}`; Cohere's rerank routes
`{"id", "message"}` with OpenAI's statuses; text-embeddings-inference's `{"error", "error_type"}` with TEI's
codes (413 for too many or too long inputs, 422 for other invalid requests, 424 for a model failure).
Overload is 429 with Retry-After in all three.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

from model_server.errors import (
    BackendFailure,
    DeadlineExceeded,
    EmptyInput,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotReady,
    OverLimit,
    Overloaded,
    ServingError,
    Unauthenticated,
)

# Seconds a shed caller is told to wait: about one queue's worth of batches on a CPU.
RETRY_AFTER_S = 1
# A message that starts with the field it is about ("input[2]: ...") names OpenAI's `param`.
_FIELD = re.compile(r"^([A-Za-z_][\w.-]*(?:\[\d+\])*): ")
_TYPE_NAME = re.compile(r"^(str|int|float|bool|list|dict|function-\w+)(\[.*\])?$")


class Api(Enum):
    """Whose error shape a route answers in."""

    OPENAI = "openai"
    COHERE = "cohere"
    TEI = "tei"


class BodyTooLarge(OverLimit):
    """The request body exceeds --max-message-bytes (HTTP's 413 in every API)."""


@dataclass(frozen=True, slots=True)
class HttpError:
    """An error answer: status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


COHERE_PATHS = frozenset({"/v1/rerank", "/v2/rerank"})


def api_of(path: str) -> Api:
    """The API a path belongs to: Cohere's rerank, OpenAI under /v1/ and /v2/, text-embeddings-inference
    elsewhere."""
    if path in COHERE_PATHS:
        return Api.COHERE
    return Api.OPENAI if path.startswith(("/v1/", "/v2/")) else Api.TEI


def error_body(api: Api, message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    """An error body in OpenAI's or Cohere's shape (TEI's carries its own error_type)."""
    if api is Api.COHERE:
        return {"id": str(uuid.uuid4()), "message": message}
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def param_of(message: str) -> str | None:
    """The request field an error message names first, if any."""
    match = _FIELD.match(message)
    return match.group(1) if match else None


# (class, status, OpenAI type, OpenAI code, TEI status, TEI error_type); the first matching class wins.
_TABLE: tuple[tuple[type[ServingError], int, str, str | None, int, str], ...] = (
    (BodyTooLarge, 413, "invalid_request_error", "request_too_large", 413, "Validation"),
    (OverLimit, 400, "invalid_request_error", None, 413, "Validation"),
    (EmptyInput, 400, "invalid_request_error", None, 400, "Empty"),
    (InvalidArgument, 400, "invalid_request_error", None, 422, "Validation"),
    (FailedPrecondition, 400, "invalid_request_error", "unsupported_task", 400, "Validation"),
    (NotFound, 404, "invalid_request_error", "model_not_found", 404, "Validation"),
    (Unauthenticated, 401, "invalid_request_error", "invalid_api_key", 401, "Unhealthy"),
    (Overloaded, 429, "requests", "rate_limit_exceeded", 429, "Overloaded"),
    (DeadlineExceeded, 504, "timeout", "deadline_exceeded", 504, "Overloaded"),
    (NotReady, 503, "server_error", "service_unavailable", 503, "Unhealthy"),
    (BackendFailure, 500, "server_error", None, 424, "Backend"),
)


def http_error(exc: ServingError, api: Api) -> HttpError:
    """The answer to a domain error on a route of `api`."""
    row = next((r for r in _TABLE if isinstance(exc, r[0])), None)
    status, kind, code, tei_status, tei_type = row[1:] if row else (500, "server_error", None, 500, "Backend")
    headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(exc, Overloaded | NotReady) else {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if api is not Api.TEI:
        return HttpError(status, error_body(api, exc.message, kind, param_of(exc.message), code), headers)
    return HttpError(tei_status, {"error": exc.message, "error_type": tei_type}, headers)


def validation_error(errors: list[dict[str, Any]], api: Api) -> HttpError:
    """The answer to a request body that does not parse or fit the route's schema (FastAPI's errors)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    # A union's member names ("str", "list[int]") are pydantic's, not the request's: leave them out.
    location = [str(part) for part in first.get("loc", ()) if part != "body" and not _TYPE_NAME.match(str(part))]
    field = ".".join(location) or "body"
    message = f"{field}: {first.get('msg', 'invalid value')}"
    if api is not Api.TEI:
        return HttpError(400, error_body(api, message, "invalid_request_error", field, None), {})
    return HttpError(422, {"error": message, "error_type": "Validation"}, {})
