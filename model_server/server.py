"""`bertmesh serve`: load the model, serve gRPC (task API, OIP v2, health, reflection), HTTP (OpenAI and
text-embeddings-inference routes, model_server.http) and metrics; drain on SIGTERM.

Start-up order: the gRPC port opens first with health NOT_SERVING (probes and clients see "loading", not
"refused"), the model loads and warms in a thread, then health flips to SERVING. On SIGTERM health flips back
to NOT_SERVING and new calls get UNAVAILABLE while the port stays open for the drain delay (so load balancers
see the replica leave), then the server stops accepting connections, every in-flight call finishes within the
grace period, and the process exits 0. The HTTP port follows the same steps (GET /health 503, calls 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from model_server import mkl_amd
from model_server.backend import Backend
from model_server.checkpoint import inspect_checkpoint
from model_server.config import (
    DEFAULT_MODEL_NAME,
    OPENMP_DEFAULTS,
    BatchingConfig,
    EngineConfig,
    LimitsConfig,
    ModelConfig,
    ServerConfig,
    bundled_model_path,
    openmp_defaults,
    parse_args,
    resolve_limits,
)
from model_server.dataplane import DataPlane, ModelDescription
from model_server.errors import ConfigError, NotReady
from model_server.http.app import create_app
from model_server.http.front import HttpFront, bind
from model_server.metrics import Metrics
from model_server.proto.bertmesh.v1 import inference_pb2
from model_server.proto.inference import grpc_service_pb2
from model_server.servicers.interceptors import AuthInterceptor, StatusInterceptor
from model_server.servicers.oip import OpenInferenceServicer
from model_server.servicers.reflection import enable_reflection
from model_server.servicers.registration import add_service
from model_server.servicers.task import InferenceServicer
from model_server.tasks import Task
from model_server.tasks.rerank import check_labels
from model_server.tokenization import TextTokenizer

log = logging.getLogger("bertmesh.serve")

TASK_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
OIP_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# Slack over max_message_bytes before grpc's own hard limit: in between, the caller gets our clear message.
_HARD_LIMIT_FACTOR = 2


def version() -> str:
    """The installed bertmesh version."""
    try:
        return metadata.version("bertmesh")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def load_model(
    model: ModelConfig,
    engine: EngineConfig,
    limits: LimitsConfig | None = None,
    batching: BatchingConfig | None = None,
) -> tuple[ModelDescription, TextTokenizer, Backend]:
    """Reads the checkpoint, loads and warms the model in its engine (blocking; torch is imported here).

    Limits and batching default to the command line's defaults."""
    path = model.path or bundled_model_path()
    checkpoint = inspect_checkpoint(Path(path), model.task)
    tokenizer = TextTokenizer.from_dir(checkpoint.path)
    mkl_amd.enable(engine.mkl_amd)  # before torch's first import, or never (see model_server.mkl_amd)
    from model_server.backend.factory import create_engine
    from model_server.backend.torch_engine import resolve_device

    device = resolve_device(engine.device)
    request_limits, batch_limits = resolve_limits(
        limits or LimitsConfig(),
        batching or BatchingConfig(),
        checkpoint.default_max_tokens,
        checkpoint.max_positions,
        device,
    )
    tokenizer.configure_truncation(request_limits.max_tokens_per_input)
    if checkpoint.task is Task.FILL_MASK and tokenizer.mask_id is None:
        raise ConfigError(f"{checkpoint.path}: fill-mask needs a mask token, and the tokenizer has none")
    rows = checkpoint.config.get("vocab_size")
    if isinstance(rows, int) and tokenizer.vocab_size > rows:
        # Such an id indexes past the embedding: the batch it is in fails, and on a GPU so does the process.
        raise ConfigError(
            f"{checkpoint.path}: the tokenizer has {tokenizer.vocab_size} tokens (added tokens included), the "
            f"model's embedding {rows} rows (config.json vocab_size); resize the model's token embeddings to the "
            "tokenizer (transformers: model.resize_token_embeddings(len(tokenizer))) and save it again"
        )
    if checkpoint.task is Task.SEQUENCE_CLASSIFICATION and not checkpoint.labels:
        raise ConfigError(f"{checkpoint.path}: sequence classification needs id2label in config.json")
    if checkpoint.task is Task.RERANK:
        check_labels(checkpoint.label_count, str(checkpoint.path))
    # Kernels are timed on the batch token budget; the cuda engine's graphs go up to a full batch.
    settings = replace(
        engine,
        device=device,
        batch_tokens=batch_limits.max_batch_tokens,
        bucket_tokens=engine.bucket_tokens or batch_limits.max_batch_tokens,
    )
    backend = create_engine(checkpoint, settings, tokenizer.pad_id)
    # The longest input a request may bring, from the model's own vocabulary.
    sample = tokenizer.encode(["warm up " * request_limits.max_tokens_per_input], truncate=True)[0].ids
    backend.warmup(sample)
    name = model.name or (DEFAULT_MODEL_NAME if model.path is None else checkpoint.path.name)
    description = ModelDescription(
        name=name,
        revision=model.revision or checkpoint.digest,
        task=checkpoint.task,
        architecture=checkpoint.architecture,
        device=backend.info.device,
        precision=backend.info.precision,
        engine=backend.info.engine,
        dimensions=backend.info.hidden_size,
        labels=checkpoint.labels,
        multi_label=checkpoint.multi_label,
        default_pooling=checkpoint.default_pooling,
        default_normalize=checkpoint.default_normalize,
        mask_token=tokenizer.mask_token,
        limits=request_limits,
        batching=batch_limits,
    )
    return description, tokenizer, backend


def read_tokens(path: Path) -> list[str]:
    """Bearer tokens from a file: one per line, blank lines and '#' comments ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"--auth-token-file {path}: {exc.strerror}") from exc
    tokens = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise ConfigError(f"--auth-token-file {path} holds no token")
    return tokens


def is_loopback(host: str) -> bool:
    """Whether host only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServingState:
    """The data plane once the model is loaded; None before and after (calls then get UNAVAILABLE)."""

    def __init__(self) -> None:
        self.plane: DataPlane | None = None
        self.draining = False

    def get(self) -> DataPlane:
        """The data plane, or NotReady while loading or draining."""
        if self.draining:
            raise NotReady("server is shutting down; retry on another replica")
        if self.plane is None:
            raise NotReady("model is loading; retry shortly")
        return self.plane


@dataclass
class RunningServer:
    """Handles of a started server (for in-process use and tests)."""

    port: int
    metrics_port: int
    http_port: int  # 0: no HTTP front
    state: ServingState
    metrics: Metrics
    ready: asyncio.Event
    stop: asyncio.Event


async def serve(
    config: ServerConfig,
    *,
    on_started: Callable[[RunningServer], None] | None = None,
    stop: asyncio.Event | None = None,
    hurry: asyncio.Event | None = None,
) -> None:
    """Runs the server until `stop` is set, then drains; `hurry` cuts the drain delay short. Raises ConfigError
    for an unusable setup."""
    stop = stop or asyncio.Event()
    tokens = read_tokens(config.auth_token_file) if config.auth_token_file else None
    if tokens is None and not is_loopback(config.host):
        log.warning(
            "serving on %s without --auth-token-file: anyone who can reach the port can call the model "
            "(inside a mesh, Istio mTLS and AuthorizationPolicy guard it)",
            config.host,
        )
    metrics = Metrics()
    state = ServingState()
    max_bytes = config.limits.max_message_bytes
    interceptors: list[grpc.aio.ServerInterceptor] = [StatusInterceptor(metrics)]
    if tokens:
        interceptors.append(AuthInterceptor(tokens))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_bytes * _HARD_LIMIT_FACTOR),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_service(server, InferenceServicer(state.get), TASK_SERVICE, max_bytes)
    add_service(server, OpenInferenceServicer(state.get, version()), OIP_SERVICE, max_bytes)
    enable_reflection(
        server,
        (TASK_SERVICE.full_name, OIP_SERVICE.full_name, health.SERVICE_NAME),
        (health_pb2.DESCRIPTOR, inference_pb2.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR),
    )
    for name in ("", TASK_SERVICE.full_name, OIP_SERVICE.full_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    try:
        port = server.add_insecure_port(f"{config.host}:{config.port}")
    except RuntimeError:
        await server.stop(None)  # or grpc's finalizer runs after the event loop has closed
        raise ConfigError(
            f"--port {config.port}: cannot listen on {config.host}:{config.port}; the port is in use "
            "(or the address is not this machine's): choose another --port or stop what holds it"
        ) from None
    stop_metrics: Callable[[], None] | None = None
    http: HttpFront | None = None
    try:
        await server.start()
        if config.metrics_port:
            stop_metrics = serve_metrics(metrics, config.host, config.metrics_port)
        if config.http_port:
            http = await start_http(config, state, metrics, tokens)
        http_port = http.port if http else 0
        running = RunningServer(port, getattr(metrics, "port", 0), http_port, state, metrics, asyncio.Event(), stop)
        log.info(
            "listening on %s:%d (gRPC)%s%s; loading the model",
            config.host,
            port,
            f", http://{config.host}:{http_port} (OpenAI, text-embeddings-inference)" if http else "",
            f", metrics on http://{config.host}:{running.metrics_port}/metrics" if stop_metrics else "",
        )
        if on_started is not None:
            on_started(running)
        loaded = await _load_unless_stopped(config, stop)
        if loaded is not None:
            description, tokenizer, backend, seconds = loaded
            # The model and its libraries are ~400k long-lived objects: move them out of the collector's sight,
            # or each full collection stalls the event loop for ~200 ms (measured under load).
            gc.collect()
            gc.freeze()
            plane = DataPlane(description, tokenizer, backend, cache_entries=config.cache_entries, metrics=metrics)
            plane.start()
            state.plane = plane
            for name in ("", TASK_SERVICE.full_name, OIP_SERVICE.full_name):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            metrics.on_model(description)
            metrics.ready.set(1)
            running.ready.set()
            log.info(
                "serving %s (%s, %s, %s %s on %s, revision %s) from %s, loaded in %.1fs; grpc://%s:%d",
                description.name,
                description.task.value,
                description.architecture,
                description.engine,
                description.precision,
                description.device,
                description.revision,
                config.model.path or "the bundled package",
                seconds,
                config.host,
                port,
            )
            await stop.wait()
        metrics.ready.set(0)
        state.draining = True  # new calls: UNAVAILABLE; calls already holding the data plane go on
        await health_servicer.enter_graceful_shutdown()
        if state.plane is not None and config.drain_delay_seconds and not (hurry and hurry.is_set()):
            # Still listening: health checks and load balancers see NOT_SERVING and stop routing here,
            # instead of meeting a refused connection while their endpoint lists catch up.
            log.info(
                "shutting down: health NOT_SERVING, new calls UNAVAILABLE; still listening for %.0fs "
                "(--drain-delay-seconds), then finishing in-flight calls (grace %.0fs)",
                config.drain_delay_seconds,
                config.grace_seconds,
            )
            await _wait(hurry, config.drain_delay_seconds)
        log.info("shutting down: finishing in-flight calls (grace %.0fs)", config.grace_seconds)
        await asyncio.gather(server.stop(config.grace_seconds), *([http.stop()] if http else []))
        http = None
        if state.plane is not None:
            await state.plane.close()
    finally:
        await server.stop(None)
        if http is not None:
            await http.stop()
        if stop_metrics is not None:
            stop_metrics()
    log.info("stopped")


async def start_http(
    config: ServerConfig, state: ServingState, metrics: Metrics, tokens: list[str] | None
) -> HttpFront:
    """Binds and starts the HTTP front (ConfigError naming --http-port when the port is taken)."""
    _, app = create_app(
        state.get,
        metrics=metrics,
        tokens=tokens,
        max_body_bytes=config.limits.max_message_bytes,
        default_timeout_s=config.http_timeout_seconds or None,
        version=version(),
    )
    front = HttpFront(app, bind(config.host, config.http_port), config.grace_seconds)
    await front.start()
    return front


async def _wait(event: asyncio.Event | None, seconds: float) -> None:
    """Waits `seconds`, or less if `event` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for((event or asyncio.Event()).wait(), seconds)


def serve_metrics(metrics: Metrics, host: str, port: int) -> Callable[[], None]:
    """Starts the metrics endpoint (see Metrics.serve); ConfigError naming the flag when the port is taken."""
    try:
        return metrics.serve(host, port)
    except OSError as exc:
        raise ConfigError(
            f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror}): choose another "
            "--metrics-port, or 0 for none"
        ) from None


async def _load_unless_stopped(
    config: ServerConfig, stop: asyncio.Event
) -> tuple[ModelDescription, TextTokenizer, Backend, float] | None:
    """Loads in a daemon thread (a SIGTERM during a long load must not wait for it); None if stopped first."""
    future: Future[tuple[ModelDescription, TextTokenizer, Backend, float]] = Future()

    def work() -> None:
        started = time.perf_counter()
        try:
            description, tokenizer, backend = load_model(config.model, config.engine, config.limits, config.batching)
            future.set_result((description, tokenizer, backend, time.perf_counter() - started))
        except BaseException as exc:  # handed to the event loop, which re-raises it
            future.set_exception(exc)

    threading.Thread(target=work, name="bertmesh-load", daemon=True).start()
    loading = asyncio.wrap_future(future)
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading in done:
        stopping.cancel()
        return loading.result()
    return None


def event_loop(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """The event loop factory for --event-loop, and its name; ConfigError when uvloop is asked for but absent.

    uvloop runs asyncio's callbacks, timers and socket wake-ups in C: `python -m bench feed` measured ~8 % less
    event-loop CPU per token with it (docs/benchmarks.md), and that thread is what bounds one process's rate."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
        else:
            return uvloop.new_event_loop, "uvloop"
    return asyncio.new_event_loop, "asyncio"


def main(argv: Sequence[str]) -> int:
    """Entry point of `bertmesh serve`; returns the process exit status."""
    # Before torch loads OpenMP: idle compute threads spin briefly, then sleep. Long spinning steals the cores
    # the event loop, gRPC and the tokenizer need; beside other load, throughput fell 3-20x (docs/benchmarks.md).
    openmp_defaults(os.environ)
    config = parse_args(argv)
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    log.info("OpenMP waiting: " + " ".join(f"{key}={os.environ.get(key, '')}" for key in OPENMP_DEFAULTS))

    async def run() -> None:
        stop, hurry = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)

        def interrupted() -> None:  # a person at a terminal: no load balancer to wait for
            hurry.set()
            stop.set()

        loop.add_signal_handler(signal.SIGINT, interrupted)
        await serve(config, stop=stop, hurry=hurry)

    try:
        factory, name = event_loop(config.event_loop)
        log.info("event loop: %s", name)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run())
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0
