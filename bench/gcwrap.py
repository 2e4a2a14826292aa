"""Runs `bertmesh serve` in this interpreter with Python's garbage collector observed (and optionally frozen).

  python -m bench.gcwrap STATS_FILE [--freeze] -- <bertmesh serve arguments>

gc.callbacks time every collection by generation; the totals are rewritten to STATS_FILE every 0.5 s.
With --freeze, gc.freeze() runs once the server reports SERVING (model loaded and warm), moving every object
that start-up made (torch modules, transformers classes: ~420 k) out of the collector's reach.
Used by `python -m bench gc`; the server code itself is unchanged.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    stats_file = Path(sys.argv[1])
    freeze = "--freeze" in sys.argv[2 : sys.argv.index("--")]
    serve_args = sys.argv[sys.argv.index("--") + 1 :]
    totals = {str(g): {"collections": 0, "seconds": 0.0} for g in range(3)}
    state = {"start": 0.0, "frozen": 0}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            state["start"] = time.perf_counter()
        else:
            entry = totals[str(info["generation"])]
            entry["collections"] += 1
            entry["seconds"] += time.perf_counter() - state["start"]

    gc.callbacks.append(on_gc)

    def report() -> None:
        port = int(serve_args[serve_args.index("--port") + 1])
        while True:
            time.sleep(0.5)
            if freeze and not state["frozen"] and _serving(port):
                gc.collect()
                gc.freeze()
                state["frozen"] = gc.get_freeze_count()
            stats_file.write_text(json.dumps({"totals": totals, "frozen": state["frozen"]}))

    threading.Thread(target=report, daemon=True).start()
    from model_server.server import main as serve_main

    sys.exit(serve_main(serve_args))


def _serving(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


if __name__ == "__main__":
    main()
