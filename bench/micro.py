"""In-process A/B micro-benchmarks of bertmesh's serving path, each pair interleaved call by call in one process
so machine drift cancels; reported as ratios. `python -m bench micro`.

  split vs whole:   one request's texts as bertmesh batches them (select_batch: length groups with <= 25%
                    padding, run one after another) against the same texts as one padded batch.
  tokenise:         bertmesh's TextTokenizer.encode (ids + offsets + word ids + special mask as tuples)
                    against ids only, per text.
  reply encoding:   EmbedResponse from `v.tolist()` per vector (bertmesh today) against building it from the
                    float32 bytes of the whole matrix, per request, plus serialisation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import corpus
from bench.run import RESULTS


def _interleave(a: Callable[[int], object], b: Callable[[int], object], rounds: int) -> tuple[float, float]:
    """Total seconds of a(i) and b(i), alternating which goes first, over `rounds` inputs."""
    ta = tb = 0.0
    for i in range(rounds):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t0 = time.perf_counter()
        first(i)
        t1 = time.perf_counter()
        second(i)
        t2 = time.perf_counter()
        if first is a:
            ta, tb = ta + t1 - t0, tb + t2 - t1
        else:
            tb, ta = tb + t1 - t0, ta + t2 - t1
    return ta, tb


def micro(rounds: int = 120, threads: int = 2) -> dict[str, Any]:
    """Runs the three comparisons; returns and writes their results."""
    from bench.batching import plan_batches
    from bench.model import Embedder, bundled_model_path
    from model_server.proto.bertmesh.v1 import inference_pb2 as pb
    from model_server.tokenization import TextTokenizer

    texts = corpus.load()
    requests = corpus.sample_requests(texts, rounds, seed=11)
    embedder = Embedder(threads=threads)
    ids = [embedder.tokenize(r.strings) for r in requests]
    embedder.forward(ids[0])

    def split(i: int) -> None:
        lengths = [len(x) for x in ids[i]]
        for batch in plan_batches(lengths, 16_384, 256):
            embedder.forward([ids[i][k] for k in batch])

    def whole(i: int) -> None:
        embedder.forward(ids[i])

    t_split, t_whole = _interleave(split, whole, rounds)
    batches_per_request = float(
        np.mean([len(plan_batches([len(x) for x in ids[i]], 16_384, 256)) for i in range(rounds)])
    )
    real = sum(len(x) for r in ids for x in r)
    padded = sum(len(r) * max(len(x) for x in r) for r in ids)

    bm_tokenizer = TextTokenizer.from_dir(bundled_model_path())
    all_texts = [t.text for t in texts]
    chunk = [all_texts[k : k + 8] for k in range(0, 8 * rounds, 8)]
    t_full, t_ids = _interleave(
        lambda i: bm_tokenizer.encode(chunk[i]), lambda i: embedder.tokenizer.encode_batch(chunk[i]), rounds
    )
    n_texts = sum(len(c) for c in chunk)

    vectors = [
        np.random.default_rng(i).standard_normal((len(r.texts), 384)).astype(np.float32) for i, r in enumerate(requests)
    ]

    def tolist(i: int) -> None:
        pb.EmbedResponse(
            embeddings=[pb.Embedding(values=v.tolist()) for v in vectors[i]], dimensions=384
        ).SerializeToString()

    def from_array(i: int) -> None:
        response = pb.EmbedResponse(dimensions=384)
        for row in vectors[i]:
            response.embeddings.add().values.extend(row)
        response.SerializeToString()

    t_tolist, t_array = _interleave(lambda i: tolist(i % rounds), lambda i: from_array(i % rounds), rounds * 5)
    result: dict[str, Any] = {
        "rounds": rounds,
        "split_vs_whole": {
            "split_ms_per_request": 1000 * t_split / rounds,
            "whole_ms_per_request": 1000 * t_whole / rounds,
            "ratio_split_over_whole": t_split / t_whole,
            "bertmesh_batches_per_request": batches_per_request,
            "whole_batch_padding_share": (padded - real) / padded,
        },
        "tokenise": {
            "bertmesh_us_per_text": 1e6 * t_full / n_texts,
            "ids_only_us_per_text": 1e6 * t_ids / n_texts,
            "ratio": t_full / t_ids,
        },
        "reply_encoding": {
            "tolist_us_per_request": 1e6 * t_tolist / (rounds * 5),
            "extend_us_per_request": 1e6 * t_array / (rounds * 5),
        },
    }
    out = RESULTS / f"micro-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"micro-benchmarks in {out}")
    return result
