"""Server interceptors: domain errors to status codes with per-method metrics, and bearer-token auth."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import grpc

from model_server.errors import InvalidArgument, ServingError, Unauthenticated
from model_server.metrics import Metrics
from model_server.servicers.registration import UndecodableRequest

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Kubelet's gRPC probes and mesh health checks carry no token.
UNAUTHENTICATED_PREFIXES = (HEALTH_PREFIX,)
# The services whose calls are counted and whose errors are mapped.
SERVED_PREFIXES = ("/bertmesh.v1.", "/inference.")


def _check(request: Any) -> Any:
    if isinstance(request, UndecodableRequest):
        raise InvalidArgument(request.reason)
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _check(request)


class _MethodMetrics:
    """One method's series, looked up once per method rather than once per call."""

    def __init__(self, metrics: Metrics, method: str) -> None:
        self.metrics = metrics
        self.method = method
        self.latency = metrics.latency.labels(method)
        self.ok = metrics.requests.labels(method, grpc.StatusCode.OK.name)

    def start(self) -> None:
        """Records a call coming in."""
        self.metrics.inflight.inc()

    def done(self, code: grpc.StatusCode, seconds: float) -> None:
        """Records one call's outcome."""
        self.metrics.inflight.dec()
        counter = self.ok if code is grpc.StatusCode.OK else self.metrics.requests.labels(self.method, code.name)
        counter.inc()
        self.latency.observe(seconds)


class _Call:
    """Bookkeeping of one RPC: the status it ended with, and its metrics."""

    def __init__(self, metrics: _MethodMetrics | None, method: str) -> None:
        self.metrics = metrics
        self.method = method
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()
        if metrics is not None:
            metrics.start()

    async def fail(self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        """Records and answers an exception; never returns (context.abort raises)."""
        if isinstance(exc, ServingError):
            self.code = grpc.StatusCode[exc.code.value]
            message = exc.message
        else:
            log.error("unexpected error in %s", self.method, exc_info=exc)
            self.code = grpc.StatusCode.INTERNAL
            message = f"internal error in {self.method}; the server log has the details"
        await context.abort(self.code, message)

    def done(self) -> None:
        """Records the outcome."""
        if self.metrics is not None:
            self.metrics.done(self.code, time.perf_counter() - self.started)


# Strings: grpc.RpcMethodHandler is generic only in the type stubs.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


def _rebuild(handler: Handler, behavior: Any) -> Handler:
    """A handler of the same kind and serializers as `handler`, running `behavior`."""
    make: Any
    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    rebuilt: Handler = make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return rebuilt


def _wrap(handler: Handler, registry: Metrics | None, method: str) -> Handler:
    name = method.rsplit("/", 1)[-1]
    metrics = _MethodMetrics(registry, name) if registry is not None else None
    inner: Any = handler.unary_unary or handler.unary_stream or handler.stream_stream or handler.stream_unary

    if not handler.response_streaming:

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = _Call(metrics, name)
            try:
                source = _checked_stream(request) if handler.request_streaming else _check(request)
                return await inner(source, context)
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await call.fail(context, exc)
            finally:
                call.done()

        return _rebuild(handler, unary)

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        call = _Call(metrics, name)
        try:
            source = _checked_stream(request) if handler.request_streaming else _check(request)
            async for response in inner(source, context):
                yield response
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await call.fail(context, exc)
        finally:
            call.done()

    return _rebuild(handler, streaming)


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps ServingError to its status code (anything else to INTERNAL, logged) and records metrics."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        # method -> (the handler grpc gave, its wrapper): built once per method, not once per call.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Wraps the method's handler."""
        handler = await continuation(handler_call_details)
        if self._metrics is not None and handler_call_details.method.startswith(HEALTH_PREFIX):
            self._metrics.health_checks.labels(handler_call_details.method.rsplit("/", 1)[-1]).inc()
        # Health and reflection keep grpc's own behaviour, and long Watch streams stay out of in-flight counts.
        method = handler_call_details.method
        if handler is None or not method.startswith(SERVED_PREFIXES):
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        # Only registered methods get a handler, so this holds one entry per served method; a refusing handler
        # (a new one per unauthenticated call) replaces the entry and is wrapped anew.
        wrapped = _wrap(handler, self._metrics, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Accepts calls carrying `authorization: Bearer <token>` for a known token (health checks exempt)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    def _authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key != "authorization":
                continue
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer":
                candidate = token.strip().encode()
                # Compare against every token in constant time: no early exit reveals a prefix.
                matches = [hmac.compare_digest(candidate, t) for t in self._tokens]
                return any(matches)
        return False

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Lets the call through, or swaps its behaviour for one that raises Unauthenticated."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        return _refusing(handler, counted=method.startswith(SERVED_PREFIXES))


def _refusing(handler: Handler, *, counted: bool) -> Handler:
    message = "missing or unknown bearer token: send metadata 'authorization: Bearer <token>'"

    async def deny(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if counted:  # the status interceptor answers it and counts the call
            raise Unauthenticated(message)
        # Reflection has no status interceptor around it: an exception would reach the caller as UNKNOWN.
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await deny(context)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await deny(context)
        yield  # pragma: no cover - makes this an async generator

    return _rebuild(handler, refuse_stream if handler.response_streaming else refuse)
