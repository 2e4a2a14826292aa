"""Reads bertmesh's Prometheus counters (padding, batch sizes, model time) for per-window deltas."""

from __future__ import annotations

import urllib.request

WATCHED = (
    "bertmesh_batch_padded_tokens_total",
    "bertmesh_batch_real_tokens_total",
    "bertmesh_batch_size_requests_sum",
    "bertmesh_batch_size_requests_count",
    "bertmesh_batch_duration_seconds_sum",
    "bertmesh_batch_duration_seconds_count",
)


def parse(text: str, names: tuple[str, ...] = WATCHED) -> dict[str, float]:
    """Sums of the named unlabelled (or all-label) samples in Prometheus text format."""
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def scrape(url: str) -> dict[str, float]:
    """The watched counters now."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        return parse(reply.read().decode())


def window_stats(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Padding share, mean batch, model-busy share over a window from two scrapes."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in WATCHED}
    padded, real = d["bertmesh_batch_padded_tokens_total"], d["bertmesh_batch_real_tokens_total"]
    batches = d["bertmesh_batch_size_requests_count"]
    return {
        "batches": batches,
        "padding_share": (padded - real) / padded if padded else 0.0,
        "mean_batch_inputs": d["bertmesh_batch_size_requests_sum"] / batches if batches else 0.0,
        "mean_batch_real_tokens": real / batches if batches else 0.0,
        "model_busy_share": d["bertmesh_batch_duration_seconds_sum"] / seconds if seconds else 0.0,
        "mean_batch_ms": 1000 * d["bertmesh_batch_duration_seconds_sum"] / batches if batches else 0.0,
    }
