"""The autoscaling-signal benchmark's pure parts: gauge parsing, ranks and Spearman's correlation."""

from __future__ import annotations

import math

from bench.autoscale_signal import gauges, ranks, spearman


def test_gauges_sum_the_watched_families_over_labels() -> None:
    text = (
        "# HELP bertmesh_queue_tokens tokens waiting\n"
        "bertmesh_queue_tokens 700.0\n"
        'bertmesh_inflight_requests{pod="a"} 3.0\n'
        'bertmesh_inflight_requests{pod="b"} 2.0\n'
        "bertmesh_queue_tokens_other 5.0\n"
    )
    assert gauges(text) == {"queue_tokens": 700.0, "inflight_requests": 5.0}


def test_ranks_give_ties_their_mean_rank() -> None:
    assert ranks([10.0, 30.0, 20.0, 20.0]) == [1.0, 4.0, 2.5, 2.5]


def test_spearman_is_one_for_the_same_order_and_minus_one_for_the_reverse() -> None:
    assert spearman([1, 2, 3, 4], [10, 200, 3000, 40000]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
