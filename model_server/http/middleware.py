"""The ASGI layer in front of every route: bearer auth, the body-size limit, and metrics by route.

Plain ASGI rather than a framework middleware class: it adds no task or copy per request, and it answers auth
and size errors before FastAPI reads or parses a body.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson

from model_server.errors import ServingError, Unauthenticated
from model_server.http.errors import BodyTooLarge, api_of, http_error
from model_server.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes and schema readers carry no token; /health is what load balancers and kubelet call.
OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
UNAUTHENTICATED_MESSAGE = "missing or unknown bearer token: send the header 'Authorization: Bearer <token>'"


class Guard:
    """Wraps the app: refuses unauthenticated calls and oversized bodies, counts every answer by route."""

    def __init__(
        self,
        app: Asgi,
        *,
        routes: Sequence[str],
        metrics: Metrics | None,
        tokens: Sequence[str] | None,
        max_body_bytes: int,
    ) -> None:
        self._app = app
        self._routes = frozenset(routes)
        self._metrics = metrics
        self._tokens = tuple(t.encode() for t in tokens or ())
        self._max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serves one ASGI connection scope."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in OPEN_PATHS:
            if self._metrics is not None and path == "/health":
                self._metrics.health_checks.labels("GET /health").inc()
            await self._app(scope, receive, send)
            return
        route = path if path in self._routes else "other"  # unknown paths must not grow label sets
        status = 500
        started = time.perf_counter()

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if self._metrics is not None:
            self._metrics.inflight.inc()
        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _answer(refusal, path, recording)
            else:
                await self._app(scope, receive, recording)
        finally:
            if self._metrics is not None:
                self._metrics.inflight.dec()
                self._metrics.http_requests.labels(route, str(status)).inc()
                self._metrics.http_latency.labels(route).observe(time.perf_counter() - started)

    def _refusal(self, scope: Scope) -> ServingError | None:
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        if self._tokens and not self._authorized(headers):
            return Unauthenticated(UNAUTHENTICATED_MESSAGE)
        length = next((value for key, value in headers if key == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self._max_body:
            return BodyTooLarge(
                f"body: {int(length)} bytes exceed max_message_bytes={self._max_body}; split the request"
            )
        return None

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        value = next((v for k, v in headers if k == b"authorization"), b"")
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        candidate = token.strip()
        # Compare against every token in constant time: no early exit reveals a prefix.
        matches = [hmac.compare_digest(candidate, t) for t in self._tokens]
        return any(matches)


async def _answer(exc: ServingError, path: str, send: Send) -> None:
    """Sends the error answer for `exc` in the shape of the API `path` belongs to."""
    error = http_error(exc, api_of(path))
    body = orjson.dumps(error.body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
