"""`bertmesh serve` as a real process: start-up log, health, SIGTERM drain, auth, reflection, CLI, imports."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from model_server.client import BertmeshClient
from model_server.config import OPENMP_DEFAULTS
from model_server.mkl_amd import cpu_vendor
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc
from tests.server.harness import details, free_port

BERTMESH = [sys.executable, "-m", "bertmesh_cli"]
LONG = " ".join(["transformers weigh every token against every other token"] * 18)


@dataclass
class Process:
    proc: subprocess.Popen[str]
    target: str
    log: list[str]


def start(*args: str, env: dict[str, str] | None = None) -> Process:
    port = free_port()
    # The server's own OpenMP defaults apply only where the environment sets neither variable.
    inherited = {k: v for k, v in os.environ.items() if k not in OPENMP_DEFAULTS}
    proc = subprocess.Popen(
        [*BERTMESH, "serve", "--port", str(port), "--metrics-port", "0", "--http-port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**inherited, **(env or {})},
    )
    log: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if " serving " in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(180)
    return Process(proc, f"127.0.0.1:{port}", log)


@pytest.fixture
def tiny_process(tiny_models: dict[str, Path]) -> Iterator[Process]:
    process = start("--model", str(tiny_models["embedding"]))
    yield process
    if process.proc.poll() is None:
        process.proc.kill()
        process.proc.wait()


def test_startup_log_says_what_was_loaded_and_where(tiny_process: Process) -> None:
    line = next(entry for entry in tiny_process.log if " serving " in entry)
    assert re.search(
        r"serving embedding \(embedding, BertModel, packed fp32 on cpu, revision sha256:\w+\) from .+ "
        r"loaded in [\d.]+s; grpc://127\.0\.0\.1:\d+",
        line,
    ), line
    with grpc.insecure_channel(tiny_process.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Set before torch loaded: OpenMP's waiting policy, and MKL's vendor answer where the processor is AMD's.
    assert any("OpenMP waiting: OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=1000" in e for e in tiny_process.log)
    mkl = next(entry for entry in tiny_process.log if "MKL on AMD:" in entry)
    expected = "applied" if cpu_vendor() == "AuthenticAMD" else "not needed"
    assert f"MKL on AMD: {expected}" in mkl, mkl
    # The tiny model's 8-wide heads are not the attention kernel's: PyTorch's attention, said so.
    kernels = next(entry for entry in tiny_process.log if "packed engine kernels:" in entry)
    assert "PyTorch SDPA attention" in kernels and "not used: the packed kernel takes head size 32 or 64" in kernels


@pytest.mark.parametrize(("choice", "loop"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_sigterm_finishes_every_in_flight_call_then_exits_zero(minilm_path: Path, choice: str, loop: str) -> None:
    # A generous grace period: the test proves every in-flight call is answered, not how fast a busy CI is.
    # On both event loops: uvloop by default (the server extra installs it), asyncio's when asked for.
    flags = ("--max-batch-tokens", "256", "--cache-entries", "0", "--grace-seconds", "300")
    process = start(*flags, "--event-loop", choice)
    assert any(f"event loop: {loop}" in line for line in process.log), process.log
    with grpc.insecure_channel(process.target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        calls = [
            stub.Embed.future(pb.EmbedRequest(inputs=[f"{i} {j} {LONG}" for j in range(6)]), timeout=120)
            for i in range(6)
        ]
        # Wait until the server holds the calls: the first one is answered only after all were sent.
        assert len(calls[0].result().embeddings) == 6
        assert not all(call.done() for call in calls), "the calls must still be in flight at SIGTERM"
        process.proc.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        for call in calls:
            assert len(call.result().embeddings) == 6  # every admitted call is answered
    assert process.proc.wait(60) == 0
    assert any("shutting down" in line for line in process.log)
    assert any("stopped" in line for line in process.log)
    # MiniLM's heads (32 wide, fp32 on CPU) fit the packed attention kernel: it is a candidate, timed at start.
    kernels = next(line for line in process.log if "packed engine kernels:" in line)
    assert "chosen by timing" in kernels and "packed kernel" in kernels and "not used" not in kernels, kernels


def test_bearer_tokens_guard_everything_but_health(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# callers\nsecret-one\n\nsecret-two\n")
    process = start("--model", str(tiny_models["embedding"]), "--auth-token-file", str(tokens))
    try:
        with BertmeshClient(process.target) as anonymous:
            assert anonymous.serving()  # probes need no token
            with pytest.raises(grpc.RpcError) as err:
                anonymous.embed(["x"])
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer <token>" in details(err.value)
        with grpc.insecure_channel(process.target) as channel:
            for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
                with pytest.raises(grpc.RpcError) as err:
                    reflect(channel, package, reflection_pb2.ServerReflectionRequest(list_services=""))
                assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
                assert "authorization: Bearer <token>" in details(err.value)
        with BertmeshClient(process.target, token="wrong") as wrong, pytest.raises(grpc.RpcError) as err:
            wrong.embed(["x"])
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with BertmeshClient(process.target, token="secret-two") as good:
            assert good.embed(["x"]).shape == (1, 32)
    finally:
        process.proc.terminate()
        assert process.proc.wait(60) == 0


def test_warns_when_serving_beyond_loopback_without_tokens(tiny_models: dict[str, Path]) -> None:
    process = start("--model", str(tiny_models["embedding"]), "--host", "0.0.0.0")
    try:
        assert any("without --auth-token-file" in line for line in process.log)
    finally:
        process.proc.terminate()
        process.proc.wait(60)


def reflect(channel: grpc.Channel, package: str, request: reflection_pb2.ServerReflectionRequest) -> Any:
    """One reflection call under `package` (v1 and v1alpha share their messages)."""
    call = channel.stream_stream(
        f"/{package}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return next(call(iter([request]), timeout=10))


@pytest.mark.parametrize("package", ["grpc.reflection.v1", "grpc.reflection.v1alpha"])
def test_reflection_lists_every_service(tiny_process: Process, package: str) -> None:
    with grpc.insecure_channel(tiny_process.target) as channel:
        reply = reflect(channel, package, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in reply.list_services_response.service}
        described = [
            reflect(channel, package, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
            for symbol in ("inference.GRPCInferenceService", f"{package}.ServerReflection")
        ]
    assert names >= {
        "bertmesh.v1.InferenceService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert all(reply.file_descriptor_response.file_descriptor_proto for reply in described)


def test_cli_calls_a_running_server(tiny_process: Process) -> None:
    out = subprocess.run(
        [*BERTMESH, "embed", "hello", "world", "--target", tiny_process.target],
        capture_output=True,
        text=True,
        check=True,
    )
    assert [json.loads(line)["text"] for line in out.stdout.splitlines()] == ["hello", "world"]
    info = subprocess.run(
        [*BERTMESH, "info", "--target", tiny_process.target], capture_output=True, text=True, check=True
    )
    assert '"task": "TASK_EMBEDDING"' in info.stdout
    refused = subprocess.run(
        [*BERTMESH, "classify", "x", "--target", tiny_process.target], capture_output=True, text=True
    )
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr


def test_unusable_models_exit_2_with_the_reason(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        (pickled / name).write_bytes((tiny_models["embedding"] / name).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    result = subprocess.run(
        [*BERTMESH, "serve", "--model", str(pickled), "--port", "0", "--metrics-port", "0", "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "bertmesh loads safetensors only" in result.stderr
    fp16 = subprocess.run(
        [
            *BERTMESH,
            "serve",
            "--model",
            str(tiny_models["embedding"]),
            "--device",
            "cpu",
            "--precision",
            "fp16",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--http-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fp16.returncode == 2 and "--precision fp16 needs a CUDA device" in fp16.stderr


@pytest.mark.parametrize(
    "module",
    ["model_server.client", "model_server.servicers.task", "model_server.servicers.oip", "model_server.dataplane"],
)
def test_client_and_servicers_import_without_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("flag", ["--port", "--metrics-port", "--http-port"])
def test_a_busy_port_exits_2_naming_the_flag_and_the_port(flag: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = str(holder.getsockname()[1])
        ports = {"--port": "0", "--metrics-port": "0", "--http-port": "0", flag: busy}
        result = subprocess.run(
            [*BERTMESH, "serve", "--host", "127.0.0.1", *(a for item in ports.items() for a in item)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert f"{flag} {busy}: cannot listen on 127.0.0.1:{busy}" in result.stderr
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr


def test_after_sigterm_new_connections_see_not_serving_until_the_drain_delay_ends(
    tiny_models: dict[str, Path],
) -> None:
    # A drain delay far longer than the test: SIGINT (Ctrl-C) cuts it short at the end.
    process = start("--model", str(tiny_models["embedding"]), "--drain-delay-seconds", "600")
    try:
        process.proc.send_signal(signal.SIGTERM)
        # A fresh connection each time, as a load balancer's health check makes.
        deadline = time.monotonic() + 60
        while True:
            with grpc.insecure_channel(process.target) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    with pytest.raises(grpc.RpcError) as err:
                        pb_grpc.InferenceServiceStub(channel).Embed(pb.EmbedRequest(inputs=["x"]), timeout=10)
                    break
            assert time.monotonic() < deadline, "health never turned NOT_SERVING"
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in details(err.value)
        assert process.proc.poll() is None
        process.proc.send_signal(signal.SIGINT)
        assert process.proc.wait(60) == 0
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()
