"""Semantic search over a small corpus with two bertmesh servers (or one): retrieve by cosine, then rerank.

1. Index: embed every passage of corpus.txt once (`Embed`, unit vectors).
2. Retrieve: embed the query and take the `--top-k` passages of highest cosine (a dot product of unit vectors).
3. Rerank: score those candidates against the query with `Rerank` and keep the `--top-n` best. Against a
   cross-encoder (reranker.yaml) this is the precise second stage; against the embedding server itself the
   server reranks by cosine, which is how this runs offline with the bundled MiniLM.

    bertmesh serve &                                    # the bundled all-MiniLM-L6-v2 on 127.0.0.1:50051
    python examples/semantic-search/search.py "how do plants make food"
    python examples/semantic-search/search.py --reranker search-rerank.ml.svc:50051 "capital of France"

Prints each query's results with the time of each stage; `--format json` prints one JSON document instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from model_server.client import BertmeshClient

CORPUS = Path(__file__).resolve().with_name("corpus.txt")
QUERIES = ("how do plants make food from sunlight", "what is the tallest mountain", "tips for making coffee")


@dataclass(frozen=True)
class Hit:
    """One result: the passage, its cosine from retrieval and its score from reranking."""

    passage: str
    index: int
    cosine: float
    score: float


@dataclass(frozen=True)
class Answer:
    """A query's results best first, the rerank method and the milliseconds of each stage."""

    query: str
    hits: list[Hit]
    method: str
    retrieve_ms: float
    rerank_ms: float


class SemanticSearch:
    """An in-memory index of unit vectors over one embedding server, reranked by another server (or the same)."""

    def __init__(self, embedder: BertmeshClient, reranker: BertmeshClient, passages: Sequence[str]) -> None:
        self.embedder, self.reranker, self.passages = embedder, reranker, list(passages)
        self.vectors = embedder.embed(self.passages, normalize=True)

    def search(self, query: str, top_k: int, top_n: int) -> Answer:
        """The top_n of the top_k passages nearest the query, reranked."""
        started = time.perf_counter()
        cosines = self.vectors @ self.embedder.embed([query], normalize=True)[0]
        nearest = [int(i) for i in np.argsort(-cosines, kind="stable")[:top_k]]
        retrieved = time.perf_counter()
        ranking = self.reranker.rerank(query, [self.passages[i] for i in nearest], top_n=top_n)
        reranked = time.perf_counter()
        hits = [
            Hit(self.passages[nearest[r.index]], nearest[r.index], float(cosines[nearest[r.index]]), r.score)
            for r in ranking.results
        ]
        return Answer(query, hits, ranking.method, (retrieved - started) * 1000, (reranked - retrieved) * 1000)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("BERTMESH_TARGET", "127.0.0.1:50051")
    p.add_argument("queries", nargs="*", metavar="QUERY", help=f"default: {', '.join(QUERIES)}")
    p.add_argument("--target", default=default, help="the embedding server (default: %(default)s)")
    p.add_argument("--reranker", default=None, help="the reranking server (default: the embedding server)")
    p.add_argument("--corpus", type=Path, default=CORPUS, help="one passage per line (default: corpus.txt)")
    p.add_argument("--top-k", type=int, default=10, help="candidates retrieved by cosine (default: %(default)s)")
    p.add_argument("--top-n", type=int, default=3, help="results kept after reranking (default: %(default)s)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    return p


def main(argv: Sequence[str]) -> int:
    """Indexes the corpus, answers each query and prints the answers."""
    args = _parser().parse_args(list(argv))
    passages = [line.strip() for line in args.corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    with (
        BertmeshClient(args.target, split_requests=True) as embedder,
        BertmeshClient(args.reranker or args.target, split_requests=True) as reranker,
    ):
        started = time.perf_counter()
        index = SemanticSearch(embedder, reranker, passages)
        index_ms = (time.perf_counter() - started) * 1000
        answers = [index.search(query, args.top_k, args.top_n) for query in args.queries or QUERIES]
    if args.format == "json":
        json.dump({"indexed": len(passages), "index_ms": index_ms, "answers": [asdict(a) for a in answers]}, sys.stdout)
        print()
        return 0
    print(f"indexed {len(passages)} passages in {index_ms:.0f} ms")
    for answer in answers:
        print(
            f"\n{answer.query!r}  (retrieve {answer.retrieve_ms:.1f} ms, rerank by {answer.method} "
            f"{answer.rerank_ms:.1f} ms)"
        )
        for rank, hit in enumerate(answer.hits, 1):
            print(f"  {rank}. [{hit.score:.3f}, cosine {hit.cosine:.3f}] {hit.passage}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
