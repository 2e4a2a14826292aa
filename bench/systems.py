"""The systems under test, each behind one async `call(request)`: bertmesh (gRPC, and HTTP with JSON floats or
base64), Triton, Infinity, the in-process ceiling, and a trivial echo server that measures the load generator
itself."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from bench.corpus import Request
from bench.procs import ServerProcess, free_port
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from model_server.proto.inference import grpc_service_pb2 as oip
from model_server.proto.inference import grpc_service_pb2_grpc as oip_grpc

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
CALL_TIMEOUT_S = 120.0
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


@dataclass(frozen=True, slots=True)
class OipTarget:
    """Where perf_analyzer reaches a system over OIP v2 gRPC, and whether the model has a batch dimension."""

    url: str
    model: str
    batched: bool  # Triton: shape [N, 1] with max_batch_size > 0; bertmesh: shape [N]


@dataclass(frozen=True, slots=True)
class Settings:
    """What every system is configured with: same model, precision and threads. The batch budget is the peers'
    (Triton's dynamic batcher and callable); bertmesh runs with its own defaults, which the in-process ceiling
    reads from it."""

    threads: int = 2
    max_batch_tokens: int = 16_384
    max_batch_inputs: int = 256
    max_batch_delay_ms: float = 2.0
    # CPUs every server process is pinned to (empty: not pinned), so a server cannot borrow the client's core
    server_cpus: tuple[int, ...] = ()
    cache_dir: Path = Path(os.environ.get("BERTMESH_CACHE", Path.home() / ".cache" / "bertmesh"))


class System(Protocol):
    """One system under test."""

    name: str

    async def start(self, logs: Path) -> None:
        """Starts the system and waits until it answers."""

    async def call(self, request: Request) -> None:
        """One request, end to end; raises on any failure or a wrong-sized answer."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors for texts (fidelity check across systems)."""

    def cpu_seconds(self) -> float:
        """CPU seconds the system's server processes used so far (0 for in-process)."""

    def oip(self) -> OipTarget | None:
        """The OIP v2 gRPC endpoint for perf_analyzer, if the system has one."""

    async def close(self) -> None:
        """Stops the system."""


def _thread_env(threads: int) -> dict[str, str]:
    return {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


async def _poll_ready(server: ServerProcess, check: Any, limit_s: float) -> None:
    await asyncio.get_running_loop().run_in_executor(None, server.wait_ready, check, limit_s)


def _libdir(python: Path) -> str:
    """Where the interpreter's libpython lives."""
    import subprocess

    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    return subprocess.check_output([str(python), "-c", code], text=True).strip()


class _ServerSystem:
    server: ServerProcess | None = None

    def cpu_seconds(self) -> float:
        return self.server.cpu_seconds() if self.server else 0.0

    def oip(self) -> OipTarget | None:
        return None

    async def _stop(self) -> None:
        if self.server is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.server.stop)


def _health_check(port: int) -> Any:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def check() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return check


class Bertmesh(_ServerSystem):
    """`bertmesh serve` as a subprocess (result cache off), called over bertmesh.v1 Embed with grpc.aio."""

    def __init__(
        self,
        settings: Settings,
        extra_args: Sequence[str] = (),
        name: str = "bertmesh",
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = env or {}
        self.settings = settings
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.metrics_port = free_port()
        self.http_port = free_port()

    async def start(self, logs: Path) -> None:
        s = self.settings
        argv = [
            str(ROOT / ".venv" / "bin" / "bertmesh"),
            "serve",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--http-port",
            str(self.http_port),
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--threads",
            str(s.threads),
            "--cache-entries",
            "0",
            # INFO: the startup lines say which kernels were chosen by timing on this machine
            "--log-level",
            "INFO",
            *self.extra_args,
        ]
        env = _thread_env(s.threads) | self.env
        self.server = ServerProcess(self.name, argv, logs / f"{self.name}.log", env, ROOT, s.server_cpus)
        await _poll_ready(self.server, _health_check(self.port), 300)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=_CHANNEL_OPTIONS)
        self.stub = pb_grpc.InferenceServiceStub(self.channel)

    async def call(self, request: Request) -> None:
        reply = await self.stub.Embed(pb.EmbedRequest(inputs=request.strings), timeout=CALL_TIMEOUT_S)
        if len(reply.embeddings) != len(request.texts):
            raise RuntimeError(f"bertmesh answered {len(reply.embeddings)} vectors for {len(request.texts)} texts")

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        reply = await self.stub.Embed(pb.EmbedRequest(inputs=list(texts)), timeout=CALL_TIMEOUT_S)
        return [list(e.values) for e in reply.embeddings]

    def oip(self) -> OipTarget | None:
        return OipTarget(f"127.0.0.1:{self.port}", MODEL_NAME, batched=False)

    def metrics_url(self) -> str:
        """The server's Prometheus endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    async def close(self) -> None:
        await self.channel.close()
        await self._stop()


class BertmeshHttp(Bertmesh):
    """`bertmesh serve` called over its HTTP front instead: OpenAI's /v1/embeddings with aiohttp, JSON floats or
    base64 (decoded here, as the OpenAI SDK does), on the same server settings as `bertmesh`."""

    def __init__(self, settings: Settings, encoding: str = "float", name: str = "bertmesh-http") -> None:
        super().__init__(settings, name=name)
        self.encoding = encoding

    async def start(self, logs: Path) -> None:
        import aiohttp

        await super().start(logs)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
        )
        self.url = f"http://127.0.0.1:{self.http_port}/v1/embeddings"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import base64

        import numpy as np

        body = {"model": MODEL_NAME, "input": list(texts), "encoding_format": self.encoding}
        async with self.session.post(self.url, json=body) as reply:
            if reply.status != 200:
                raise RuntimeError(f"bertmesh-http answered HTTP {reply.status}: {(await reply.text())[:300]}")
            data = (await reply.json())["data"]
        if self.encoding == "base64":
            return [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist() for d in data]
        return [item["embedding"] for item in data]

    async def call(self, request: Request) -> None:
        vectors = await self.embed(request.strings)
        if len(vectors) != len(request.texts) or len(vectors[0]) != DIMENSIONS:
            raise RuntimeError(f"bertmesh-http answered {len(vectors)} vectors for {len(request.texts)} texts")

    def oip(self) -> OipTarget | None:
        return None  # perf_analyzer measures gRPC: the plain bertmesh system has it

    async def close(self) -> None:
        await self.session.close()
        await super().close()


def _bytes_tensor(texts: Sequence[str]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (t.encode() for t in texts))


class Triton(_ServerSystem):
    """Triton through nvidia-pytriton (bench/peers/triton_server.py in its own venv), called over OIP v2."""

    def __init__(self, settings: Settings, venv: Path, name: str = "triton", env: dict[str, str] | None = None) -> None:
        self.name = name
        self.settings = settings
        self.venv = venv
        self.env = env or {}
        self.port = free_port()

    async def start(self, logs: Path) -> None:
        s = self.settings
        python = self.venv / "bin" / "python"
        libdir = _libdir(python)
        env = _thread_env(s.threads)
        # The Python-backend stub is linked against libpython: the interpreter's own must be found.
        env["LD_LIBRARY_PATH"] = ":".join(x for x in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if x)
        env["PYTHONPATH"] = str(ROOT)
        env |= self.env
        argv = [
            str(python),
            str(ROOT / "bench" / "peers" / "triton_server.py"),
            "--grpc-port",
            str(self.port),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--threads",
            str(s.threads),
            "--max-batch-size",
            str(s.max_batch_inputs),
            "--max-queue-delay-us",
            str(int(s.max_batch_delay_ms * 1000)),
        ]
        self.server = ServerProcess(self.name, argv, logs / f"{self.name}.log", env, ROOT, s.server_cpus)

        def ready() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                reply = oip_grpc.GRPCInferenceServiceStub(channel).ModelReady(
                    oip.ModelReadyRequest(name=MODEL_NAME), timeout=2
                )
                return bool(reply.ready)

        await _poll_ready(self.server, ready, 300)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=_CHANNEL_OPTIONS)
        self.stub = oip_grpc.GRPCInferenceServiceStub(self.channel)

    def _request(self, texts: Sequence[str]) -> oip.ModelInferRequest:
        request = oip.ModelInferRequest(model_name=MODEL_NAME)
        request.inputs.add(name="text", datatype="BYTES", shape=[len(texts), 1])
        request.raw_input_contents.append(_bytes_tensor(texts))
        return request

    async def call(self, request: Request) -> None:
        reply = await self.stub.ModelInfer(self._request(request.strings), timeout=CALL_TIMEOUT_S)
        size = len(reply.raw_output_contents[0]) if reply.raw_output_contents else 0
        if size != 4 * DIMENSIONS * len(request.texts):
            raise RuntimeError(f"triton answered {size} bytes for {len(request.texts)} texts")

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import numpy as np

        reply = await self.stub.ModelInfer(self._request(texts), timeout=CALL_TIMEOUT_S)
        matrix = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(len(texts), -1)
        return [list(map(float, row)) for row in matrix]

    def oip(self) -> OipTarget | None:
        return OipTarget(f"127.0.0.1:{self.port}", MODEL_NAME, batched=True)

    async def close(self) -> None:
        await self.channel.close()
        await self._stop()


class Infinity(_ServerSystem):
    """infinity-emb (torch engine, fp32, CPU) in its own venv, called over its OpenAI-style HTTP /embeddings."""

    def __init__(
        self,
        settings: Settings,
        venv: Path,
        model_path: Path,
        batch_size: int = 32,
        name: str = "infinity",
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = env or {}
        self.settings = settings
        self.venv = venv
        self.model_path = model_path
        self.batch_size = batch_size
        self.port = free_port()

    async def start(self, logs: Path) -> None:
        import aiohttp

        argv = [
            str(self.venv / "bin" / "infinity_emb"),
            "v2",
            "--model-id",
            str(self.model_path),
            "--served-model-name",
            MODEL_NAME,
            "--engine",
            "torch",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--batch-size",
            str(self.batch_size),
            "--no-vector-disk-cache",
            "--no-bettertransformer",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        env = _thread_env(self.settings.threads)
        env["INFINITY_ANONYMOUS_USAGE_STATS"] = "0"
        env["DO_NOT_TRACK"] = "1"
        env |= self.env
        self.server = ServerProcess(self.name, argv, logs / f"{self.name}.log", env, ROOT, self.settings.server_cpus)
        url = f"http://127.0.0.1:{self.port}/health"

        def ready() -> bool:
            import urllib.request

            with urllib.request.urlopen(url, timeout=2) as reply:
                return bool(reply.status == 200)

        await _poll_ready(self.server, ready, 300)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
        )
        self.url = f"http://127.0.0.1:{self.port}/embeddings"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        async with self.session.post(self.url, json={"model": MODEL_NAME, "input": list(texts)}) as reply:
            if reply.status != 200:
                raise RuntimeError(f"infinity answered HTTP {reply.status}: {(await reply.text())[:300]}")
            body = await reply.json()
        return [item["embedding"] for item in body["data"]]

    async def call(self, request: Request) -> None:
        vectors = await self.embed(request.strings)
        if len(vectors) != len(request.texts):
            raise RuntimeError(f"infinity answered {len(vectors)} vectors for {len(request.texts)} texts")

    async def close(self) -> None:
        await self.session.close()
        await self._stop()


class InProcess:
    """The ceiling: bertmesh's own model in this process, no network, no serialisation, no batching delay.

    The model is loaded by bertmesh's loading code with `bertmesh serve`'s defaults (same engine, kernels,
    precision and batch limits), inputs of all callers wait in one queue, and whenever the model is free the
    next batch is chosen by bertmesh's own selection for that engine and computed in one worker thread. What
    bertmesh adds on top of this is its serving path: gRPC, protobuf, its event loop and admission.
    """

    def __init__(self, settings: Settings) -> None:
        self.name = "in-process"
        self.settings = settings
        self._queue: list[tuple[tuple[int, ...], _Pending]] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, logs: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from model_server.config import ModelConfig, engine_defaults
        from model_server.server import load_model

        torch.set_num_threads(self.settings.threads)
        engine = dataclasses.replace(engine_defaults(), precision="fp32", device="cpu", threads=self.settings.threads)
        self.model, self.tokenizer, self.backend = load_model(ModelConfig(), engine)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ceiling")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        from model_server.backend import ModelInput
        from model_server.batcher import selection

        loop = asyncio.get_running_loop()
        limits = self.model.batching
        select = selection(padded=not self.backend.info.packed)
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._queue:
                chosen = select(
                    [len(ids) for ids, _ in self._queue], limits.max_batch_tokens, limits.max_batch_requests
                )
                taken = set(chosen)
                batch = [self._queue[i] for i in chosen]
                self._queue = [item for k, item in enumerate(self._queue) if k not in taken]
                inputs = [ModelInput(ids, self.model.default_pooling) for ids, _ in batch]
                try:
                    await loop.run_in_executor(self._pool, self.backend.run, inputs)
                except Exception as exc:
                    for _, pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                    continue
                for _, pending in batch:
                    pending.left -= 1
                    if pending.left == 0 and not pending.future.done():
                        pending.future.set_result(None)

    async def call(self, request: Request) -> None:
        pending = _Pending(asyncio.get_running_loop().create_future(), len(request.texts))
        for encoded in self.tokenizer.encode(request.strings, truncate=True):
            self._queue.append((encoded.ids, pending))
        self._arrived.set()
        await pending.future

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        from model_server.backend import ModelInput
        from model_server.postprocess import l2_normalize

        loop = asyncio.get_running_loop()
        encoded = self.tokenizer.encode(list(texts), truncate=True)
        inputs = [ModelInput(e.ids, self.model.default_pooling) for e in encoded]
        vectors = await loop.run_in_executor(self._pool, self.backend.run, inputs)
        return [list(map(float, l2_normalize(v))) for v in vectors]

    def cpu_seconds(self) -> float:
        return 0.0

    def oip(self) -> OipTarget | None:
        return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown()


@dataclass(eq=False, slots=True)
class _Pending:
    future: asyncio.Future[None]
    left: int


class Echo(_ServerSystem):
    """A trivial bertmesh.v1 Embed server (zero vectors, same reply size, no model): the load generator's ceiling."""

    def __init__(self) -> None:
        self.name = "echo"
        self.port = free_port()

    async def start(self, logs: Path) -> None:
        argv = [sys.executable, "-m", "bench", "echo-server", "--port", str(self.port)]
        self.server = ServerProcess(self.name, argv, logs / "echo.log", {"PYTHONUNBUFFERED": "1"}, ROOT)
        await _poll_ready(self.server, _health_check(self.port), 60)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=_CHANNEL_OPTIONS)
        self.stub = pb_grpc.InferenceServiceStub(self.channel)

    async def call(self, request: Request) -> None:
        reply = await self.stub.Embed(pb.EmbedRequest(inputs=request.strings), timeout=CALL_TIMEOUT_S)
        if len(reply.embeddings) != len(request.texts):
            raise RuntimeError("echo answered the wrong number of vectors")

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[0.0] * DIMENSIONS for _ in texts]

    async def close(self) -> None:
        await self.channel.close()
        await self._stop()


async def serve_echo(port: int) -> None:
    """The echo server's body: health SERVING, Embed answers zero vectors of the model's width."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    class EchoServicer(pb_grpc.InferenceServiceServicer):
        async def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
            zeros = [0.0] * DIMENSIONS
            return pb.EmbedResponse(
                embeddings=[pb.Embedding(values=zeros) for _ in request.inputs], dimensions=DIMENSIONS
            )

    server = grpc.aio.server(options=_CHANNEL_OPTIONS)
    pb_grpc.add_InferenceServiceServicer_to_server(EchoServicer(), server)  # type: ignore[abstract]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()
