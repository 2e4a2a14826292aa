"""Triton (via nvidia-pytriton) serving all-MiniLM-L6-v2 fp32 with Triton's dynamic batcher, on CPU.

Run in the Triton peer's venv (bench/peers/triton.sh) with the repository root on PYTHONPATH:
  python bench/peers/triton_server.py --grpc-port 8001 --http-port 8000 --metrics-port 8002 --threads 2
Input 'text' BYTES [-1, 1] (the batch dimension is Triton's), output 'embedding' FP32 [-1, 384]. The callable
gets the whole dynamic batch and computes it like the in-process ceiling (bench.model.Embedder: tokenise,
length-sorted sub-batches, mean pooling, L2 normalisation).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import numpy as np

from bench.model import Embedder

MODEL_NAME = "all-MiniLM-L6-v2"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-batch-size", type=int, default=256, help="texts per dynamic batch")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batcher wait (bertmesh: 2 ms)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s triton-peer %(message)s")

    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    embedder = Embedder(threads=a.threads)
    embedder.embed(["warm up the kernels", "a second, somewhat longer text to warm up with " * 8])

    @batch  # type: ignore[untyped-decorator]
    def infer(text: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        texts = [t.decode("utf-8") for t in text.reshape(-1)]
        return {"embedding": embedder.embed(texts)}

    config = TritonConfig(
        grpc_port=a.grpc_port,
        http_port=a.http_port,
        metrics_port=a.metrics_port,
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
    )
    # pytriton guards Triton's statistics API with a generated token by default; perf_analyzer reads it to
    # report server-side queue and compute times. Loopback only, so leave statistics open.
    security = TritonSecurityConfig(restricted_endpoints=["shared-memory", "model-repository", "trace", "logging"])
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=infer,
            inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="embedding", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=a.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=a.max_queue_delay_us),
            ),
            strict=False,
        )
        logging.info("serving %s on grpc 127.0.0.1:%d", MODEL_NAME, a.grpc_port)
        triton.serve()


if __name__ == "__main__":
    main()
