"""The HTTP front's ASGI app: FastAPI with the OpenAI and text-embeddings-inference routes on the data plane.

Every route reaches the model through `DataPlane` only (the same limits, cache, admission and deadlines as
gRPC) and never imports torch. Errors are answered in the shape of the route's API (model_server.http.errors).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from model_server.dataplane import DataPlane
from model_server.errors import InvalidArgument, ServingError
from model_server.http.encoding import JsonResponse
from model_server.http.errors import Api, HttpError, api_of, error_body, http_error, validation_error
from model_server.http.middleware import Asgi, Guard
from model_server.metrics import Metrics

log = logging.getLogger(__name__)

TIMEOUT_HEADER = "x-request-timeout"


def plane_of(request: Request) -> DataPlane:
    """The data plane, or NotReady (503) while the model loads or the server drains."""
    plane: DataPlane = request.app.state.plane()
    return plane


def deadline_of(request: Request, timeout: Annotated[str | None, Header(alias=TIMEOUT_HEADER)] = None) -> float | None:
    """The request's absolute deadline: its X-Request-Timeout (seconds) or the server's default (None: none)."""
    seconds: float | None = request.app.state.default_timeout_s
    if timeout is not None:
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise InvalidArgument(f"{TIMEOUT_HEADER}: {timeout!r} is not a positive number of seconds")
    return None if seconds is None else time.monotonic() + seconds


Plane = Annotated[DataPlane, Depends(plane_of)]
Deadline = Annotated[float | None, Depends(deadline_of)]


def _response(error: HttpError) -> JsonResponse:
    return JsonResponse(error.body, status_code=error.status, headers=error.headers)


async def _serving_error(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, ServingError)
    return _response(http_error(exc, api_of(request.url.path)))


async def _invalid_body(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, RequestValidationError)
    return _response(validation_error(list(exc.errors()), api_of(request.url.path)))


async def _http_exception(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    api = api_of(request.url.path)
    if api is not Api.TEI:
        body = error_body(api, message, "invalid_request_error", None, None)
        return JsonResponse(body, status_code=exc.status_code)
    return JsonResponse({"error": message, "error_type": "Validation"}, status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> JsonResponse:
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    error = ServingError(f"internal error in {request.url.path}; the server log has the details")
    return _response(http_error(error, api_of(request.url.path)))


def create_app(
    plane: Callable[[], DataPlane],
    *,
    metrics: Metrics | None,
    tokens: Sequence[str] | None,
    max_body_bytes: int,
    default_timeout_s: float | None,
    version: str,
) -> tuple[FastAPI, Asgi]:
    """The FastAPI app (for its routes and schema) and the ASGI callable to serve (the app behind Guard)."""
    from model_server.http import openai_routes, rerank_routes, tei_routes

    app = FastAPI(
        title="bertmesh",
        version=version,
        description="OpenAI embeddings, Cohere rerank and text-embeddings-inference routes on a bertmesh model server.",
    )
    app.state.plane = plane
    app.state.default_timeout_s = default_timeout_s
    app.state.version = version
    app.state.started = int(time.time())
    app.include_router(openai_routes.router)
    app.include_router(tei_routes.router)
    app.include_router(rerank_routes.router)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(Exception, _unexpected)
    routers = (openai_routes.router, tei_routes.router, rerank_routes.router)
    routes = [getattr(route, "path", "") for r in routers for route in r.routes]
    return app, Guard(app, routes=routes, metrics=metrics, tokens=tokens, max_body_bytes=max_body_bytes)
