"""The GPU benchmark's one table: every measurement on a row, with its ratio to the matching peer (the best
sentence-transformers `encode` rate of the same model, i.e. batch 256), written as summary.md."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

HEADER = (
    "| part | model | precision | what | tokens/s | vs ST encode 256 | MFU (measured peak) | p50 / p99 ms "
    "| GPU busy | server cores |\n|---|---|---|---|---|---|---|---|---|---|"
)


def attempt(what: str, measure: Callable[[], T], on_error: Callable[[str, BaseException], None]) -> T | None:
    """`measure()`; or, where it raises, None once `on_error` has the failure. On a scarce GPU call one measurement
    that fails (a precision whose graphs do not capture, a server that does not start) costs that row, not the
    rows after it."""
    try:
        return measure()
    except Exception as exc:  # any failure is reported in place of its row, and the run goes on
        on_error(what, exc)
        return None


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _row(part: str, r: dict[str, Any], what: str, baseline: dict[str, float], **extra: str) -> str:
    rate = r["tokens_per_s"]
    peer = baseline.get(r["model"])
    ratio = f"{rate / peer:.2f}x" if peer else "-"
    mfu = _num(r.get("mfu_measured_peak"), "{:.1%}")
    latency = extra.get("latency", "-")
    return (
        f"| {part} | {r['model']} | {r['precision']} | {what} | {rate:,.0f} | {ratio} | {mfu} | {latency} "
        f"| {extra.get('gpu', '-')} | {extra.get('cores', '-')} |"
    )


def table(result: dict[str, Any]) -> str:
    """The markdown table of one results.json."""
    peers = result.get("peers", [])
    baseline = {p["model"]: p["tokens_per_s"] for p in peers if p["peer"].endswith("batch 256")}
    lines = [
        f"{result['device']}, torch {result['torch']}: measured matmul peak "
        f"{result['measured_peak_flops'] / 1e12:.1f} TFLOP/s",
        "",
        HEADER,
    ]
    for r in result.get("rows", []):
        inflight = r.get("inflight_batches", 1)
        what = f"in process, {r['engine']} engine, {inflight} batch{'es' if inflight > 1 else ''} in flight"
        lines.append(_row("engine", r, what, baseline))
    first = result.get("first_pass")
    if first:
        rates = first["tokens_per_s_by_pass"]
        for n, rate in enumerate(rates, 1):
            what = f"{first['batches']} unseen batches, pass {n} ({first['ms_per_batch_by_pass'][n - 1]:.1f} ms/batch)"
            lines.append(_row("first pass", first | {"tokens_per_s": rate}, what, baseline))
    for r in result.get("serve", []):
        latency = f"{_num(r['p50_ms'], '{:.1f}')} / {_num(r['p99_ms'], '{:.1f}')}"
        gpu = _num(r["gpu_busy_percent"], "{:.0f} %")
        what = (
            f"gRPC, {r['scenario']}, {r['client_processes']} client processes"
            + (f", --inflight-batches {r['inflight_batches']}" if r.get("inflight_batches") else "")
            + (f", failures {r['failures']}" if r["failures"] else "")
        )
        lines.append(
            _row("serve", r, what, baseline, latency=latency, gpu=gpu, cores=_num(r["server_cpu_cores"], "{:.1f}"))
        )
    for r in peers:
        lines.append(_row("peer", r, r["peer"], baseline))
    if first:
        lines += ["", f"First pass over unseen compositions: {first['first_over_steady']:.0%} of the steady rate."]
    errors = result.get("errors", [])
    if errors:
        lines += ["", f"**{len(errors)} measurement(s) failed** (tracebacks in the run's output):"]
        lines += [f"- {e['what']}: {e['error']}" for e in errors]
    return "\n".join(lines)


def write_report(result: dict[str, Any], out: Path) -> str:
    """Writes summary.md (the table) into `out` and returns it."""
    text = table(result)
    (out / "summary.md").write_text(text + "\n")
    return text
