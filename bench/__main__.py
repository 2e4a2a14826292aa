"""`python -m bench` (or `make bench ARGS=...`): run the interleaved benchmark, or one of its helpers.

python -m bench run [--quick] [--systems bertmesh,bertmesh-http,bertmesh-http-b64,in-process,triton,infinity] ...
python -m bench corpus            regenerate bench/corpus/texts.tsv
python -m bench profile           py-spy profile of bertmesh under load
python -m bench micro             A/B micro-benchmarks of the serving path (ratios)
python -m bench contention        each system next to a one-core CPU burner; bertmesh thread/spin variants
python -m bench gc                GC time inside bertmesh under load, with and without gc.freeze()
python -m bench kernels           the packed attention kernel per instruction set vs PyTorch's attention
python -m bench feed              the serving path's own cost: bertmesh serve with the model's compute taken out
python -m bench echo-server --port N   (used by `run`)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from collections.abc import Sequence


def _ints(value: str) -> list[int]:
    return [int(x) for x in value.split(",") if x]


def _floats(value: str) -> list[float]:
    return [float(x) for x in value.split(",") if x]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(argv) if argv is not None else sys.argv[1:]
    if args[:1] == ["feed-server"]:  # `bertmesh serve`'s own arguments follow (used by `feed`)
        from bench.feed import serve_free

        return serve_free(args[1:])
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="the interleaved benchmark (default)")
    r.add_argument("--systems", default="bertmesh,in-process,triton,infinity")
    r.add_argument("--concurrency", type=_ints, default=None, help="closed-loop sweep (default 1,2,4,8,16,32,64)")
    r.add_argument("--fractions", type=_floats, default=None, help="open-loop load, fractions of capacity")
    r.add_argument("--repeats", type=int, default=2)
    r.add_argument("--open-repeats", type=int, default=1)
    r.add_argument("--warmup", type=float, default=2.0, help="seconds before each window")
    r.add_argument("--measure", type=float, default=8.0, help="seconds of each closed-loop window")
    r.add_argument("--open-measure", type=float, default=15.0, help="seconds of each open-loop window")
    r.add_argument("--texts", default="1-8", help="texts per request, uniform (default 1-8)")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--seed", type=int, default=6)
    r.add_argument(
        "--pin",
        default="",
        metavar="SERVER/CLIENT",
        help="pin every server to SERVER CPUs and the load generator to CLIENT CPUs, e.g. 0/1 (default: unpinned)",
    )
    r.add_argument("--no-perf-analyzer", action="store_true")
    r.add_argument("--pa-concurrency", type=_ints, default=None)
    r.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="an extra bertmesh system with extra serve flags and env:KEY=VALUE settings, e.g. "
        "'bertmesh-b1024=--max-batch-tokens 1024' or 'bertmesh+omp-passive=env:OMP_WAIT_POLICY=PASSIVE'",
    )
    r.add_argument("--quick", action="store_true", help="smoke run: c=1,8,32, 1 repeat, short windows")
    sub.add_parser("corpus", help="regenerate the corpus")
    co = sub.add_parser("contention", help="throughput kept next to a one-core CPU burner, bertmesh variants")
    co.add_argument("--concurrency", type=int, default=8)
    co.add_argument("--rounds", type=int, default=3)
    co.add_argument("--seconds", type=float, default=6.0)
    co.add_argument("--variants", default="bertmesh,bertmesh+omp-passive,bertmesh+spin300k")
    gp = sub.add_parser("gc", help="Python GC time inside bertmesh under load, with and without gc.freeze()")
    gp.add_argument("--concurrency", type=int, default=16)
    gp.add_argument("--rounds", type=int, default=4)
    gp.add_argument("--seconds", type=float, default=8.0)
    rb = sub.add_parser("report", help="rebuild summary.md and the figures of a finished run")
    rb.add_argument("dir")
    mi = sub.add_parser("micro", help="in-process A/B micro-benchmarks of the serving path")
    mi.add_argument("--rounds", type=int, default=120)
    pr = sub.add_parser("profile", help="py-spy profile of bertmesh under closed-loop load")
    pr.add_argument("--concurrency", type=int, default=32)
    pr.add_argument("--seconds", type=int, default=20)
    gb = sub.add_parser("gpu", help="the GPU benchmark: engine, first pass, serve over gRPC, peers (bench/gpu.py)")
    gb.add_argument("--precisions", default="fp16,bf16")
    gb.add_argument("--models", default="minilm,bert-base", help="of tiny, minilm, bert-base (random weights)")
    gb.add_argument("--parts", default="engine,first-pass,serve,peers")
    gb.add_argument("--device", default="cuda")
    gb.add_argument("--seconds", type=float, default=20.0, help="engine window per model and precision")
    gb.add_argument("--serve-seconds", type=float, default=15.0, help="gRPC window per scenario")
    gb.add_argument("--clients", type=int, default=8, help="gRPC client processes")
    gb.add_argument("--engine", default="auto", help="bertmesh's --engine (auto: the cuda engine on CUDA)")
    gb.add_argument("--tiny", action="store_true", help="only a tiny random BERT (smoke runs)")
    gb.add_argument("--model-files", default=None, help="tokenizer/config files (default: the bundled MiniLM)")
    gb.add_argument("--dry-run", action="store_true", help="every part on CPU, tiny model, short windows")
    gb.add_argument("--out", default=None, help="results folder (default bench/results/gpu-<time>)")
    en = sub.add_parser("engine", help="in-process A/B of the CPU engine options (bench/engine.py)")
    en.add_argument("--rounds", type=int, default=3)
    en.add_argument("--seconds", type=float, default=8.0)
    en.add_argument("--configs", default="", help="';'-separated names from bench/engine.py CONFIGS (default all)")
    en.add_argument(
        "--isa",
        default="avx512",
        help="comma-separated: avx512 (what the processor has), avx2 (capped: oneDNN and "
        "the attention kernel), e.g. avx512,avx2 for both in one run",
    )
    en.add_argument("--threads", type=int, default=2, help="torch threads of each worker (default 2)")
    en.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ke = sub.add_parser("kernels", help="the attention kernel per instruction set vs PyTorch's (bench/kernels.py)")
    ke.add_argument("--threads", type=_ints, default=[1, 2])
    ke.add_argument("--isas", default="avx512,avx2", help="avx512 (what the processor has), avx2 (capped)")
    ke.add_argument("--rounds", type=int, default=5)
    ke.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    fe = sub.add_parser("feed", help="bertmesh serve with the model's compute taken out (bench/feed.py)")
    fe.add_argument("--seconds", type=float, default=8.0)
    fe.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    fe.add_argument("--out", default=None, help="results folder (default bench/results/feed-<time>)")
    fe.add_argument(
        "--serve-flags", default="", help="more `bertmesh serve` flags, e.g. '--event-loop asyncio' (an A/B)"
    )
    fe.add_argument(
        "--echo", action="store_true", help="the same loads against the echo server too: a bare grpc.aio floor"
    )
    e = sub.add_parser("echo-server")
    e.add_argument("--port", type=int, required=True)
    a = p.parse_args(list(argv) if argv is not None else (sys.argv[1:] or ["run"]))
    # The in-process ceiling and the GEMM peak run in this process: the same MKL as bertmesh's, so before torch.
    # and the server's OpenMP waiting policy for the same reason (peers keep their own defaults).
    from model_server import mkl_amd
    from model_server.config import engine_defaults, openmp_defaults

    openmp_defaults(os.environ)
    mkl_amd.enable(engine_defaults().mkl_amd)

    if a.command == "corpus":
        from bench.corpus import CORPUS_PATH
        from bench.corpus.generate import write

        print(f"{write(CORPUS_PATH)} texts written to {CORPUS_PATH}")
        return 0
    if a.command == "echo-server":
        from bench.systems import serve_echo

        asyncio.run(serve_echo(a.port))
        return 0
    if a.command == "contention":
        from bench.contention import contention

        contention(a.concurrency, a.rounds, a.seconds, [v for v in a.variants.split(",") if v])
        return 0
    if a.command == "gc":
        from bench.gcprobe import gc_probe

        gc_probe(a.concurrency, a.rounds, a.seconds)
        return 0
    if a.command == "report":
        from pathlib import Path

        from bench.report import rebuild

        print(rebuild(Path(a.dir)))
        return 0
    if a.command == "micro":
        from bench.micro import micro

        micro(a.rounds)
        return 0
    if a.command == "engine":
        import json

        from bench.engine import engine_bench, worker

        if a.worker is not None:
            print(json.dumps(worker(a.worker, a.seconds, a.threads)))
        else:
            configs, isas = [n for n in a.configs.split(";") if n], [i for i in a.isa.split(",") if i]
            engine_bench(a.rounds, a.seconds, configs, isas, a.threads)
        return 0
    if a.command == "kernels":
        import json

        from bench.kernels import kernels_bench
        from bench.kernels import worker as kernels_worker

        if a.worker is not None:
            print(json.dumps(kernels_worker(a.worker, a.rounds)))
        else:
            kernels_bench(a.threads, [i for i in a.isas.split(",") if i], a.rounds)
        return 0
    if a.command == "gpu":
        from bench.gpu import gpu_bench, options_from

        return 1 if gpu_bench(options_from(vars(a))).get("errors") else 0
    if a.command == "feed":
        from pathlib import Path

        from bench.feed import feed_bench

        feed_bench(a.seconds, a.clients, Path(a.out) if a.out else None, shlex.split(a.serve_flags), a.echo)
        return 0
    if a.command == "profile":
        from bench.profile import profile

        return profile(a.concurrency, a.seconds)

    from bench.run import Plan, run_sync

    low, _, high = a.texts.partition("-")
    plan = Plan(
        systems=[s for s in a.systems.split(",") if s],
        repeats=a.repeats,
        open_repeats=a.open_repeats,
        warmup_s=a.warmup,
        measure_s=a.measure,
        open_measure_s=a.open_measure,
        min_texts=int(low),
        max_texts=int(high or low),
        threads=a.threads,
        seed=a.seed,
        pin=a.pin,
        perf_analyzer=not a.no_perf_analyzer,
    )
    for variant in a.variant:
        name, _, flags = variant.partition("=")
        plan.variants[name] = flags.split()
        if name not in plan.systems:
            plan.systems.append(name)
    if a.quick:
        plan.concurrency, plan.repeats, plan.warmup_s, plan.measure_s, plan.open_measure_s = (
            [1, 8, 32],
            1,
            1.0,
            3.0,
            5.0,
        )
        plan.pa_concurrency = [8]
    if a.concurrency:
        plan.concurrency = a.concurrency
    if a.fractions:
        plan.fractions = a.fractions
    if a.pa_concurrency:
        plan.pa_concurrency = a.pa_concurrency
    run_sync(plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
