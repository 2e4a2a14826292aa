"""From run summaries to the tables, ratios and figures of a benchmark run (pure except the PNG writers)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import RunSummary
from model_server.loadgen.stats import median


@dataclass(frozen=True, slots=True)
class Point:
    """One system at one load point: medians over the repeats."""

    system: str
    mode: str
    load: float
    req_per_s: float
    inputs_per_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    flop_util: float
    server_cpu_ms_per_req: float
    client_cpu_ms_per_req: float
    tokens_per_cpu_s: float  # real tokens per CPU second of the system (the bench process for in-process)
    requests: int
    errors: int


def points(summaries: Iterable[RunSummary], peak_flops: float) -> list[Point]:
    """Medians over repeats of every (system, mode, load)."""
    groups: dict[tuple[str, str, float], list[RunSummary]] = defaultdict(list)
    for s in summaries:
        groups[(s.system, s.mode, s.load)].append(s)
    out = []
    for (system, mode, load), runs in sorted(groups.items()):
        out.append(
            Point(
                system=system,
                mode=mode,
                load=load,
                req_per_s=median([r.req_per_s for r in runs]),
                inputs_per_s=median([r.inputs_per_s for r in runs]),
                tokens_per_s=median([r.tokens_per_s for r in runs]),
                p50_ms=median([r.p50_ms for r in runs]),
                p99_ms=median([r.p99_ms for r in runs]),
                flop_util=median([r.useful_flops / r.seconds / peak_flops for r in runs]) if peak_flops else math.nan,
                server_cpu_ms_per_req=median([1000 * r.server_cpu_s / max(r.requests, 1) for r in runs]),
                client_cpu_ms_per_req=median([1000 * r.client_cpu_s / max(r.requests, 1) for r in runs]),
                tokens_per_cpu_s=median([r.tokens / _system_cpu(r) for r in runs if _system_cpu(r) > 0]),
                requests=sum(r.requests for r in runs),
                errors=sum(r.errors for r in runs),
            )
        )
    return out


def _system_cpu(r: RunSummary) -> float:
    return r.client_cpu_s if r.system == "in-process" else r.server_cpu_s


def paired_capacity_ratios(summaries: Iterable[RunSummary], subject: str = "bertmesh") -> dict[str, dict[str, float]]:
    """Per repeat, each system's capacity (best closed-loop req/s of that repeat); the ratio subject/peer per
    repeat, then median, min and max over repeats. Windows of one repeat ran minutes apart at most, so each
    ratio compares systems under similar machine conditions."""
    best: dict[tuple[str, int], float] = defaultdict(float)
    for s in summaries:
        if s.mode == "closed" and s.errors == 0:
            best[(s.system, s.repeat)] = max(best[(s.system, s.repeat)], s.req_per_s)
    repeats = sorted({rep for _, rep in best})
    peers = sorted({name for name, _ in best} - {subject})
    out = {}
    for peer in peers:
        values = [
            ratio(best[(subject, rep)], best[(peer, rep)])
            for rep in repeats
            if (subject, rep) in best and (peer, rep) in best
        ]
        values = [v for v in values if not math.isnan(v)]
        if values:
            out[peer] = {"median": median(values), "min": min(values), "max": max(values), "repeats": len(values)}
    return out


def saturation(pts: Sequence[Point], system: str) -> Point | None:
    """The closed-loop point of highest throughput of a system (its measured capacity)."""
    mine = [p for p in pts if p.system == system and p.mode == "closed" and p.errors == 0]
    return max(mine, key=lambda p: p.req_per_s) if mine else None


def open_point(pts: Sequence[Point], system: str, fraction: float, capacity: float) -> Point | None:
    """The open-loop point of a system nearest to `fraction` of its capacity."""
    mine = [p for p in pts if p.system == system and p.mode == "open"]
    if not mine or not capacity:
        return None
    return min(mine, key=lambda p: abs(p.load / capacity - fraction))


def ratio(a: float, b: float) -> float:
    """a / b, nan when b is zero or missing."""
    return a / b if b and not math.isnan(b) else math.nan


def fmt(value: float, digits: int = 1) -> str:
    """A number for a table; '-' for nan."""
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def summary_table(pts: Sequence[Point], systems: Sequence[str], fractions: Sequence[float]) -> list[dict[str, Any]]:
    """One row per system: capacity point, open-loop p99s, unloaded p99."""
    rows = []
    for system in systems:
        sat = saturation(pts, system)
        if sat is None:
            continue
        unloaded = [p for p in pts if p.system == system and p.mode == "closed" and p.load == 1]
        row: dict[str, Any] = {
            "system": system,
            "concurrency": sat.load,
            "req_per_s": sat.req_per_s,
            "inputs_per_s": sat.inputs_per_s,
            "tokens_per_s": sat.tokens_per_s,
            "p50_ms": sat.p50_ms,
            "p99_ms": sat.p99_ms,
            "flop_util": sat.flop_util,
            "server_cpu_ms_per_req": sat.server_cpu_ms_per_req,
            "tokens_per_cpu_s": sat.tokens_per_cpu_s,
            "unloaded_p99_ms": unloaded[0].p99_ms if unloaded else math.nan,
        }
        for f in fractions:
            op = open_point(pts, system, f, sat.req_per_s)
            row[f"p99_ms_at_{int(f * 100)}pct"] = op.p99_ms if op else math.nan
            row[f"rate_at_{int(f * 100)}pct"] = op.req_per_s if op else math.nan
        rows.append(row)
    return rows


def ratios(rows: Sequence[dict[str, Any]], subject: str = "bertmesh") -> dict[str, dict[str, float]]:
    """subject / peer for throughput (higher is better) and p99s (lower is better) per peer."""
    by = {r["system"]: r for r in rows}
    if subject not in by:
        return {}
    me = by[subject]
    out = {}
    for peer, row in by.items():
        if peer == subject:
            continue
        entry = {
            "throughput": ratio(me["req_per_s"], row["req_per_s"]),
            "p99_at_saturation": ratio(me["p99_ms"], row["p99_ms"]),
        }
        for key in me:
            if key.startswith("p99_ms_at_"):
                entry[key.replace("p99_ms_at_", "p99_at_")] = ratio(me[key], row.get(key, math.nan))
        out[peer] = entry
    return out


def markdown(
    rows: Sequence[dict[str, Any]],
    rats: dict[str, dict[str, float]],
    fractions: Sequence[float],
    paired: dict[str, dict[str, float]] | None = None,
) -> str:
    """The summary and the ratios as Markdown tables."""
    head = ["system", "conc.", "req/s", "inputs/s", "tokens/s", "p50 ms", "p99 ms", "FLOP util", "tokens/CPU-s"]
    head += [f"p99 @{int(f * 100)}% ms" for f in fractions] + ["unloaded p99 ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["system"],
            fmt(r["concurrency"], 0),
            fmt(r["req_per_s"]),
            fmt(r["inputs_per_s"]),
            fmt(r["tokens_per_s"], 0),
            fmt(r["p50_ms"]),
            fmt(r["p99_ms"]),
            fmt(100 * r["flop_util"]) + "%",
            fmt(r["tokens_per_cpu_s"], 0),
        ]
        cells += [fmt(r.get(f"p99_ms_at_{int(f * 100)}pct", math.nan)) for f in fractions]
        cells.append(fmt(r["unloaded_p99_ms"]))
        lines.append("| " + " | ".join(cells) + " |")
    if rats:
        keys = sorted({k for v in rats.values() for k in v})
        lines += ["", "| bertmesh / peer | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for peer, entry in rats.items():
            lines.append(f"| {peer} | " + " | ".join(fmt(entry.get(k, math.nan), 2) for k in keys) + " |")
    if paired:
        lines += [
            "",
            "| bertmesh / peer capacity, paired per repeat | median | min | max | repeats |",
            "|---|---|---|---|---|",
        ]
        for peer, e in paired.items():
            lines.append(
                f"| {peer} | {fmt(e['median'], 2)} | {fmt(e['min'], 2)} | {fmt(e['max'], 2)} | {e['repeats']:.0f} |"
            )
    return "\n".join(lines)


def plot(pts: Sequence[Point], systems: Sequence[str], path: Path, title: str) -> None:
    """Throughput against p99 (closed-loop sweep, one line per system, concurrency labelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for system in systems:
        mine = sorted((p for p in pts if p.system == system and p.mode == "closed"), key=lambda p: p.load)
        if not mine:
            continue
        xs = [p.p99_ms for p in mine]
        ys = [p.req_per_s for p in mine]
        ax.plot(xs, ys, marker="o", label=system)
        for p in mine:
            ax.annotate(f"{p.load:g}", (p.p99_ms, p.req_per_s), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("p99 latency (ms, log scale)")
    ax.set_ylabel("throughput (requests/s)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_overhead(pts: Sequence[Point], path: Path, title: str) -> None:
    """The issue-2 figure: bertmesh over gRPC against the same model in-process, tokens/s per concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    series = {}
    names = ["in-process", *sorted({p.system for p in pts if p.system.startswith("bertmesh")})]
    for system in names:
        mine = sorted((p for p in pts if p.system == system and p.mode == "closed"), key=lambda p: p.load)
        series[system] = {p.load: p.tokens_per_s for p in mine}
        left.plot([p.load for p in mine], [p.tokens_per_s for p in mine], marker="o", label=system)
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent requests")
    left.set_ylabel("real tokens/s")
    left.legend()
    left.grid(True, alpha=0.3)
    width = 0.8 / max(len(names) - 1, 1)
    for k, system in enumerate(names[1:]):
        common = sorted(set(series[system]) & set(series["in-process"]))
        xs = [i + k * width for i in range(len(common))]
        right.bar(xs, [ratio(series[system][c], series["in-process"][c]) for c in common], width, label=system)
        right.set_xticks([i + 0.4 - width / 2 for i in range(len(common))], [f"{c:g}" for c in common])
    right.axhline(0.9, color="red", linestyle="--", linewidth=1, label="target 0.90 (overhead <= 10%)")
    right.set_xlabel("concurrent requests")
    right.set_ylabel("bertmesh / in-process throughput")
    right.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rebuild(result_dir: Path) -> str:
    """Re-derives the tables and figures of a finished run from its results.json; returns the Markdown."""
    import json

    from bench.stats import RunSummary

    data = json.loads((result_dir / "results.json").read_text())
    fields = set(RunSummary.__dataclass_fields__)
    summaries = [RunSummary(**{k: v for k, v in s.items() if k in fields}) for s in data["summaries"]]
    peak = float(data["gemm_peak_flops"]["used"])
    fractions = list(data["plan"]["fractions"])
    names = list(dict.fromkeys(s.system for s in summaries))
    pts = points(summaries, peak)
    rows = summary_table(pts, names, fractions)
    md = markdown(rows, ratios(rows), fractions, paired_capacity_ratios(summaries))
    title = f"MiniLM-L6 fp32, {data['plan']['threads']} threads, {result_dir.name}"
    plot(pts, names, result_dir / "throughput_vs_p99.png", title)
    if "bertmesh" in names and "in-process" in names:
        plot_overhead(pts, result_dir / "bertmesh_vs_inprocess.png", title)
    (result_dir / "summary.md").write_text(md + "\n")
    return md
