"""One interleaved benchmark run: start every system, sweep them round-robin, write JSON, Markdown and PNGs.

Every load point is measured for all systems back to back (the starting system rotates each round), and
the whole sweep is repeated, so slow drift of a shared machine (other builds, thermal state) hits every
system alike. Results are reported as medians over repeats and as ratios bertmesh/peer.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import corpus, flops, promscrape, report, workload
from bench.procs import machine_cpu_seconds
from bench.stats import RunSummary, summarize
from bench.systems import ROOT, Bertmesh, BertmeshHttp, Echo, Infinity, InProcess, Settings, System, Triton
from model_server.loadgen.drivers import Window, closed_loop, open_loop
from model_server.loadgen.schedules import poisson_arrivals

RESULTS = ROOT / "bench" / "results"


@dataclass
class Plan:
    """What a run measures."""

    systems: list[str]
    concurrency: list[int] = field(default_factory=lambda: list(workload.DEFAULT_CONCURRENCY))
    fractions: list[float] = field(default_factory=lambda: list(workload.DEFAULT_LOAD_FRACTIONS))
    repeats: int = 2
    open_repeats: int = 1
    warmup_s: float = 2.0
    measure_s: float = 8.0
    open_measure_s: float = 15.0
    min_texts: int = 1
    max_texts: int = 8
    seed: int = 6
    threads: int = 2
    # "SERVER/CLIENT" CPU lists, e.g. "0/1": each server on its CPUs, the load generator on the others
    pin: str = ""
    perf_analyzer: bool = True
    pa_concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    pa_texts: int = 4
    # extra bertmesh systems: name -> serve flags; "env:KEY=VALUE" items set the server's environment instead
    variants: dict[str, list[str]] = field(default_factory=dict)


def _peer_venv(script: str) -> Path:
    """Runs a peer setup script (idempotent; cached) and returns the path it prints."""
    out = subprocess.run([str(ROOT / "bench" / "peers" / script)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _mkl_library(settings: Settings) -> Path:
    """model_server.mkl_amd's library, built once into the cache for peers to LD_PRELOAD."""
    from model_server import native

    directory = settings.cache_dir / "bench-mkl-vendor"
    directory.mkdir(parents=True, exist_ok=True)
    library = native.build(native.MKL_VENDOR, directory)
    if isinstance(library, str):
        raise OSError(library)
    return library


def build_systems(plan: Plan, settings: Settings, notes: dict[str, str]) -> list[System]:
    """The requested systems; a peer whose setup fails is left out with the reason in `notes`."""
    from bench.model import bundled_model_path

    systems: list[System] = []
    for name in plan.systems:
        try:
            if name == "bertmesh":
                systems.append(Bertmesh(settings))
            elif name == "bertmesh-http":
                systems.append(BertmeshHttp(settings))
            elif name == "bertmesh-http-b64":
                systems.append(BertmeshHttp(settings, "base64", name=name))
            elif name in plan.variants:
                items = plan.variants[name]
                env = dict(i[4:].split("=", 1) for i in items if i.startswith("env:"))
                flags = [i for i in items if not i.startswith("env:")]
                systems.append(Bertmesh(settings, flags, name=name, env=env))
            elif name == "in-process":
                systems.append(InProcess(settings))
            elif name == "triton":
                systems.append(Triton(settings, _peer_venv("triton.sh")))
            elif name == "infinity":
                systems.append(Infinity(settings, _peer_venv("infinity.sh"), bundled_model_path()))
            elif name in ("triton+mkl", "infinity+mkl"):
                # The peer with the same MKL vendor answer bertmesh loads (model_server.mkl_amd), by LD_PRELOAD.
                env = {"LD_PRELOAD": str(_mkl_library(settings))}
                if name == "triton+mkl":
                    systems.append(Triton(settings, _peer_venv("triton.sh"), name=name, env=env))
                else:
                    model = bundled_model_path()
                    systems.append(Infinity(settings, _peer_venv("infinity.sh"), model, name=name, env=env))
            else:
                raise ValueError(f"unknown system {name!r}")
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            notes[name] = f"setup failed: {detail[-800:]}"
            print(f"bench: leaving out {name}: {notes[name]}", flush=True)
    return systems


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else math.nan


async def fidelity(systems: list[System], texts: list[str]) -> dict[str, dict[str, Any]]:
    """Cosine of each system's vectors to the in-process (or first) system's: same model, same answers."""
    vectors = {s.name: await s.embed(texts) for s in systems}
    ref_name = "in-process" if "in-process" in vectors else systems[0].name
    ref = vectors[ref_name]
    out = {}
    for name, vecs in vectors.items():
        cos = [_cosine(a, b) for a, b in zip(vecs, ref, strict=True)]
        out[name] = {"reference": ref_name, "min_cosine": min(cos), "mean_cosine": sum(cos) / len(cos)}
    return out


class Runner:
    """Measures systems window by window and keeps every summary."""

    def __init__(self, plan: Plan, systems: list[System], shape: flops.EncoderShape) -> None:
        self.plan = plan
        self.systems = systems
        self.shape = shape
        self.summaries: list[RunSummary] = []
        self.bertmesh_windows: list[dict[str, Any]] = []
        self.interference: list[float] = []
        self.contention: list[dict[str, Any]] = []

    def _others_cpu(self, current: System) -> float:
        return sum(s.cpu_seconds() for s in self.systems if s is not current)

    async def measure(self, system: System, mode: str, load: float, repeat: int, window_fn: Any) -> RunSummary:
        """Runs one window of one system and records its summary (and bertmesh's batch statistics)."""
        metrics_url = system.metrics_url() if isinstance(system, Bertmesh) else None
        before_metrics = promscrape.scrape(metrics_url) if metrics_url else None
        cpu0, others0 = system.cpu_seconds(), self._others_cpu(system)
        client0 = time.process_time()
        busy0, steal0 = machine_cpu_seconds()
        started = time.perf_counter()
        window: Window[corpus.Request] = await window_fn()
        elapsed = time.perf_counter() - started
        busy1, steal1 = machine_cpu_seconds()
        server_cpu = system.cpu_seconds() - cpu0
        # Everything else that ran on the machine meanwhile (other users' work): the drift interleaving cancels.
        foreign = (busy1 - busy0) - server_cpu - (time.process_time() - client0) - (self._others_cpu(system) - others0)
        self.contention.append(
            {
                "system": system.name,
                "mode": mode,
                "load": load,
                "repeat": repeat,
                "foreign_cores": max(foreign, 0.0) / elapsed,
                "steal_cores": (steal1 - steal0) / elapsed,
            }
        )
        # Only the measured window's share of the server's CPU: the server also worked during warm-up.
        server_cpu *= window.seconds / elapsed if elapsed else 0.0
        self.interference.append(self._others_cpu(system) - others0)
        lengths = [t.tokens for r in window.requests for t in r.texts]
        summary = summarize(
            system.name,
            mode,
            load,
            repeat,
            window.seconds,
            window.latencies_s,
            window.errors,
            len(lengths),
            sum(lengths),
            window.client_cpu_s,
            server_cpu,
            flops.useful_flops(lengths, self.shape),
        )
        self.summaries.append(summary)
        if metrics_url and before_metrics is not None:
            stats = promscrape.window_stats(before_metrics, promscrape.scrape(metrics_url), elapsed)
            self.bertmesh_windows.append({"mode": mode, "load": load, "repeat": repeat, **stats})
        c = self.contention[-1]
        err = f" foreign={c['foreign_cores']:.2f} steal={c['steal_cores']:.2f} cores"
        err += f" errors={window.errors} ({window.first_error})" if window.errors else ""
        print(
            f"bench: {system.name:10s} {mode:6s} {load:7.2f} r{repeat}: {summary.req_per_s:7.2f} req/s "
            f"{summary.tokens_per_s:8.0f} tok/s p50 {summary.p50_ms:7.1f} ms p99 {summary.p99_ms:7.1f} ms "
            f"n={summary.requests}{err}",
            flush=True,
        )
        return summary


async def run(plan: Plan, out_dir: Path | None = None) -> Path:
    """Runs the plan; returns the results directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = out_dir or RESULTS / stamp
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server_cpus, client_cpus = parse_pin(plan.pin)
    settings = Settings(threads=plan.threads, server_cpus=server_cpus)
    if client_cpus:
        # Set before any server starts; each server's own affinity replaces this one in its process.
        os.sched_setaffinity(0, set(client_cpus))
    notes: dict[str, str] = {}
    texts = corpus.load()
    requests = corpus.sample_requests(texts, 5000, plan.seed, plan.min_texts, plan.max_texts)
    shape = flops.minilm_l6_shape()

    print("bench: measuring the fp32 GEMM peak", flush=True)
    peak_before = flops.gemm_peak_flops(plan.threads)
    systems = build_systems(plan, settings, notes)
    started: list[System] = []
    echo = Echo()
    result: dict[str, Any] = {}
    try:
        for system in [*systems, echo]:
            try:
                await system.start(logs)
                started.append(system)
            except Exception as exc:
                notes[system.name] = f"did not start: {exc}"[-1500:]
                print(f"bench: leaving out {system.name}: {notes[system.name]}", flush=True)
        live = [s for s in systems if s in started]
        names = [s.name for s in live]
        result["fidelity"] = await fidelity(live, [t.text for t in texts[:32]])
        print(f"bench: fidelity {json.dumps(result['fidelity'])}", flush=True)
        runner = Runner(plan, live, shape)

        # The load generator's own ceiling: a model-free server answering same-sized replies.
        if echo in started:
            echo_runner = Runner(plan, [echo], shape)
            for c in (1, max(plan.concurrency)):
                await echo_runner.measure(
                    echo, "closed", c, 0, lambda c=c: closed_loop(echo.call, requests, c, 1.0, 4.0)
                )
            result["loadgen"] = [s.to_json() for s in echo_runner.summaries]
            await echo.close()
            started.remove(echo)

        round_index = 0
        for repeat in range(plan.repeats):
            for c in plan.concurrency:
                for system in workload.rotation(live, round_index):
                    await runner.measure(
                        system,
                        "closed",
                        c,
                        repeat,
                        lambda s=system, c=c: closed_loop(s.call, requests, c, plan.warmup_s, plan.measure_s),
                    )
                round_index += 1

        pts = report.points(runner.summaries, 1.0)
        capacity = {n: (report.saturation(pts, n) or pts[0]).req_per_s for n in names}
        for repeat in range(plan.open_repeats):
            for fraction in plan.fractions:
                for system in workload.rotation(live, round_index):
                    rate = fraction * capacity[system.name]
                    arrivals = poisson_arrivals(rate, plan.warmup_s + plan.open_measure_s, plan.seed + repeat)
                    await runner.measure(
                        system,
                        "open",
                        rate,
                        repeat,
                        lambda s=system, a=arrivals: open_loop(s.call, requests, a, plan.warmup_s, plan.open_measure_s),
                    )
                    round_index += 1

        if plan.perf_analyzer:
            from bench import perf_analyzer

            result["perf_analyzer"] = await perf_analyzer.sweep(plan, live, texts, out, notes)

        peak_after = flops.gemm_peak_flops(plan.threads)
        peak = max(peak_before, peak_after)
        result.update(
            date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            machine={
                "platform": platform.platform(),
                "processor": _cpu_model(),
                "cpus": _cpu_count(),
                "load_average_at_end": list(_loadavg()),
            },
            plan=asdict(plan),
            notes=notes,
            gemm_peak_flops={"before": peak_before, "after": peak_after, "used": peak},
            encoder=asdict(shape),
            capacity=capacity,
            summaries=[s.to_json() for s in runner.summaries],
            bertmesh_batches=runner.bertmesh_windows,
            idle_interference_cpu_s={"max": max(runner.interference, default=0.0)},
            contention=runner.contention,
        )
        pts = report.points(runner.summaries, peak)
        rows = report.summary_table(pts, names, plan.fractions)
        rats = report.ratios(rows)
        paired = report.paired_capacity_ratios(runner.summaries)
        result["paired_capacity_ratios"] = paired
        result["points"] = [asdict(p) for p in pts]
        result["table"] = rows
        result["ratios"] = rats
        title = f"MiniLM-L6 fp32, {plan.threads} threads, {plan.min_texts}-{plan.max_texts} texts/request, {stamp}"
        report.plot(pts, names, out / "throughput_vs_p99.png", title)
        if "bertmesh" in names and "in-process" in names:
            report.plot_overhead(pts, out / "bertmesh_vs_inprocess.png", title)
        md = report.markdown(rows, rats, plan.fractions, paired)
        (out / "summary.md").write_text(md + "\n")
        print(md, flush=True)
    finally:
        (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
        for system in started:
            try:
                await system.close()
            except Exception as exc:  # keep stopping the others
                print(f"bench: stopping {system.name}: {exc}", flush=True)
    print(f"bench: results in {out}", flush=True)
    return out


def parse_pin(pin: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """ "0/1" or "0-1/2,3" -> (server CPUs, client CPUs); "" -> nothing pinned."""
    if not pin:
        return (), ()
    server, sep, client = pin.partition("/")
    if not sep or not server or not client:
        raise ValueError(f"--pin must be SERVER_CPUS/CLIENT_CPUS, e.g. 0/1; got {pin!r}")
    return _cpu_list(server), _cpu_list(client)


def _cpu_list(text: str) -> tuple[int, ...]:
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return tuple(cpus)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_count() -> int:
    return os.cpu_count() or 1


def _loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def run_sync(plan: Plan) -> Path:
    """Runs the plan on a fresh event loop."""
    return asyncio.run(run(plan))
