"""The benchmark's pure parts: corpus sampling, summaries, FLOP counts, the sweep's order, batch planning, reports.
Fast, no servers, no timing assertions. Percentiles and arrival schedules: tests/server/test_loadgen.py."""

from __future__ import annotations

import pytest

from bench import corpus, flops, promscrape, report, workload
from bench.batching import padded_tokens, plan_batches
from bench.stats import summarize


def test_corpus_is_small_and_within_the_token_range() -> None:
    assert corpus.CORPUS_PATH.stat().st_size < 1_000_000
    texts = corpus.load()
    assert len(texts) >= 1000
    lengths = [t.tokens for t in texts]
    assert min(lengths) >= corpus.MIN_TOKENS
    assert max(lengths) <= corpus.MAX_TOKENS
    # a mix, not one length: short queries and long passages both present
    assert sum(n <= 24 for n in lengths) > len(lengths) / 5
    assert sum(n > 128 for n in lengths) > len(lengths) / 20


def test_corpus_token_counts_match_the_minilm_tokenizer() -> None:
    from bench.corpus.generate import minilm_token_counter

    count = minilm_token_counter()
    for text in corpus.load()[:50]:
        assert count(text.text) == text.tokens


def test_corpus_holds_no_text_twice() -> None:
    texts = [t.text for t in corpus.load()]
    assert len(set(texts)) == len(texts)


def test_sampling_is_deterministic_by_seed() -> None:
    texts = corpus.load()
    a = corpus.sample_requests(texts, 200, seed=7)
    b = corpus.sample_requests(texts, 200, seed=7)
    c = corpus.sample_requests(texts, 200, seed=8)
    assert a == b
    assert a != c


def test_requests_carry_1_to_8_distinct_texts() -> None:
    requests = corpus.sample_requests(corpus.load(), 500, seed=1, min_texts=1, max_texts=8)
    sizes = {len(r.texts) for r in requests}
    assert sizes == set(range(1, 9))
    for r in requests:
        assert len(set(r.strings)) == len(r.texts)  # no duplicates a server could deduplicate
        assert r.tokens == sum(t.tokens for t in r.texts)


def test_sampling_refuses_impossible_sizes() -> None:
    with pytest.raises(ValueError):
        corpus.sample_requests(corpus.load(), 1, seed=1, min_texts=0)


def test_generator_keeps_every_text_inside_its_band() -> None:
    from bench.corpus.generate import LENGTH_MIX, generate

    rows = generate(60, seed=3, count_tokens=lambda text: len(text.split()) + 2)
    bands = [(lo, hi) for lo, hi, _ in LENGTH_MIX]
    for tokens, _text in rows:
        assert any(lo <= tokens <= hi for lo, hi in bands)


def test_summary_rates_and_latencies() -> None:
    s = summarize("x", "closed", 4, 0, 2.0, [0.010, 0.020, 0.030], 1, 6, 300, 0.1, 0.5, 1e9)
    assert s.requests == 3
    assert s.req_per_s == 1.5
    assert s.tokens_per_s == 150
    assert s.p50_ms == pytest.approx(20.0)
    assert s.to_json()["inputs_per_s"] == 3.0


def test_flops_count_linear_weights_twice_per_token_plus_attention() -> None:
    shape = flops.EncoderShape(params=1000, layers=2, hidden=8)
    assert flops.input_flops(10, shape) == 2 * 1000 * 10 + 4 * 2 * 8 * 10 * 10
    assert flops.useful_flops([10, 10], shape) == 2 * flops.input_flops(10, shape)


def test_minilm_shape_matches_the_checkpoint() -> None:
    shape = flops.minilm_l6_shape()
    assert shape.layers == 6 and shape.hidden == 384
    assert shape.params == 6 * (4 * 384 * 384 + 2 * 384 * 1536)  # 10.6 M encoder weights


def test_rotation_lets_each_system_go_first() -> None:
    items = ["a", "b", "c"]
    firsts = {workload.rotation(items, i)[0] for i in range(3)}
    assert firsts == set(items)
    assert sorted(workload.rotation(items, 5)) == items


def test_plan_batches_covers_every_input_once_within_the_budget() -> None:
    lengths = [8, 250, 30, 31, 29, 120, 9, 10, 200, 33]
    batches = plan_batches(lengths, max_tokens=256, max_items=4)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 4
        assert len(b) * max(lengths[i] for i in b) <= 256 or len(b) == 1
    assert padded_tokens(lengths, batches) >= sum(lengths)


def test_prometheus_window_stats() -> None:
    before = promscrape.parse("bertmesh_batch_padded_tokens_total 100\nbertmesh_batch_real_tokens_total 80\n")
    after = promscrape.parse(
        "# HELP x\nbertmesh_batch_padded_tokens_total 300\nbertmesh_batch_real_tokens_total 230\n"
        "bertmesh_batch_size_requests_sum 20\nbertmesh_batch_size_requests_count 4\n"
        "bertmesh_batch_duration_seconds_sum 1.5\nbertmesh_batch_duration_seconds_count 4\n"
    )
    stats = promscrape.window_stats(before, after, 3.0)
    assert stats["padding_share"] == pytest.approx(50 / 200)
    assert stats["mean_batch_inputs"] == 5
    assert stats["model_busy_share"] == pytest.approx(0.5)


def test_report_ratios_pick_each_systems_capacity() -> None:
    runs = [
        summarize("bertmesh", "closed", c, r, 1.0, [0.1] * n, 0, n, n * 10, 0.0, 1.0, 0.0)
        for r in range(2)
        for c, n in ((1, 10), (8, 30))
    ] + [
        summarize("triton", "closed", c, r, 1.0, [0.2] * n, 0, n, n * 10, 0.0, 1.0, 0.0)
        for r in range(2)
        for c, n in ((1, 10), (8, 15))
    ]
    pts = report.points(runs, peak_flops=1e9)
    rows = report.summary_table(pts, ["bertmesh", "triton"], [])
    assert [r["req_per_s"] for r in rows] == [30, 15]
    assert report.ratios(rows)["triton"]["throughput"] == 2.0
    assert report.paired_capacity_ratios(runs)["triton"]["median"] == 2.0
    assert "| triton |" in report.markdown(rows, report.ratios(rows), [])
