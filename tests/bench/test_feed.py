"""bench/feed.py: the real server with its engine swapped for one that computes nothing, loaded over gRPC.
No timing assertions: only that the swap happened and the loads are measured and written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.procs import ServerProcess, free_port
from bench.systems import _health_check
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.proto.bertmesh.v1 import inference_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_the_feed_server_is_bertmesh_serve_answering_without_computing(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "bench", "feed-server", "--port", str(port), "--http-port", "0"]
    argv += ["--metrics-port", "0", "--drain-delay-seconds", "0", "--device", "cpu"]
    server = ServerProcess("feed-server", argv, tmp_path / "server.log", {}, ROOT)
    try:
        server.wait_ready(_health_check(port), timeout=300)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            reply = stub.Embed(pb.EmbedRequest(inputs=["a cat", "the stock market fell sharply"]))
            with pytest.raises(grpc.RpcError) as refused:  # the real limits still apply
                stub.Embed(pb.EmbedRequest(inputs=[]))
    finally:
        server.stop()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    first, second = (np.asarray(e.values) for e in reply.embeddings)
    # The bundled MiniLM would tell these apart; the free engine's constant vector, normalised, does not.
    assert reply.dimensions == 384 and np.allclose(first, second) and np.allclose(first, 384**-0.5)
    assert reply.usage.tokens > 0


def test_both_loads_are_measured_and_written_for_bertmesh_and_the_echo_floor(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench", "feed", "--seconds", "1", "--clients", "1", "--out", str(tmp_path)]
    done = subprocess.run([*argv, "--echo"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "feed.json").read_text())
    loads = ["1-8 texts, c=64", "64 texts, c=16"]
    assert [r["load"] for r in rows] == [*loads, *(f"echo: {load}" for load in loads)]
    for row in rows:
        assert row["tokens_per_s"] > 0 and row["requests_per_s"] > 0 and not row["failures"]
        assert row["main_thread_cores"] >= 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert done.stdout.count("| 1-8 texts") == 1 and done.stdout.count("| echo: 1-8 texts") == 1
    assert "tokens per server CPU-s" in done.stdout
