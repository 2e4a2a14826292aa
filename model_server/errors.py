"""Domain errors of the model server; one interceptor maps each to its gRPC status code.

Messages are written for the caller: they name the field, the value and the limit, and say what to do.
"""

from __future__ import annotations

from enum import Enum


class Code(Enum):
    """The gRPC status a domain error is answered with (names match grpc.StatusCode)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class ServingError(Exception):
    """Base of errors that are answered to the caller with a status code and a message."""

    code = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServingError):
    """The request breaks a limit or is malformed; retrying it unchanged cannot succeed."""

    code = Code.INVALID_ARGUMENT


class OverLimit(InvalidArgument):
    """The request has more inputs, characters or tokens than the server's limits (HTTP fronts answer 413)."""


class EmptyInput(InvalidArgument):
    """An input is empty or blank (text-embeddings-inference answers these 400, apart from other validation)."""


class NotFound(ServingError):
    """The request names a model this server does not serve."""

    code = Code.NOT_FOUND


class FailedPrecondition(ServingError):
    """The request is valid but not for this model (e.g. Classify on an embedding model)."""

    code = Code.FAILED_PRECONDITION


class Overloaded(ServingError):
    """The queue is full; the caller should back off. Never UNAVAILABLE, which meshes retry at once."""

    code = Code.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    """The request's deadline passed before it was computed; it was dropped without compute."""

    code = Code.DEADLINE_EXCEEDED


class Unauthenticated(ServingError):
    """The call carries no valid bearer token."""

    code = Code.UNAUTHENTICATED


class NotReady(ServingError):
    """The model is still loading or the server is shutting down; another replica may answer."""

    code = Code.UNAVAILABLE


class BackendFailure(ServingError):
    """The model failed on a batch: a server fault, never caused by one request's content."""

    code = Code.INTERNAL


class ConfigError(Exception):
    """The server's configuration or checkpoint is unusable; raised at start-up, before serving."""
