"""`bertmesh embed|classify|classify-tokens|fill-mask|rerank|tokenize|info`: call a running server from the shell.

Every per-input command prints JSON Lines by default (one compact object per input, its text first); rerank
prints one per ranked document, best first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np
from google.protobuf import json_format

from model_server.client import AGGREGATIONS, BertmeshClient, split_inputs
from model_server.client_output import FORMATS, Progress, Record, rounded, write_json, write_jsonl, write_npy
from model_server.config import DEFAULT_PORT
from model_server.proto.bertmesh.v1 import inference_pb2 as pb
from model_server.tasks import FloatArray

TARGET_VARIABLE = "BERTMESH_TARGET"
DEFAULT_TARGET = f"127.0.0.1:{DEFAULT_PORT}"


def _format_option(parser: argparse.ArgumentParser, formats: Sequence[str]) -> None:
    parser.add_argument(
        "--format",
        choices=formats,
        default="jsonl",
        help="jsonl: one compact JSON line per input (default); json: one indented array"
        + ("; npy: the vectors as a float32 .npy array" if "npy" in formats else ""),
    )


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertmesh", description="Call a running bertmesh server.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--target",
        default=environ.get(TARGET_VARIABLE) or DEFAULT_TARGET,
        help=f"server address host:port (default: %(default)s; ${TARGET_VARIABLE} sets it)",
    )
    common.add_argument("--token-file", type=Path, default=None, help="file whose first line is a bearer token")
    common.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    inputs = argparse.ArgumentParser(add_help=False)
    inputs.add_argument("texts", nargs="*", metavar="TEXT", help="the inputs; - reads one per line from stdin")
    inputs.add_argument("--file", type=Path, default=None, help="read the inputs from a file, one per line")
    truncate = argparse.ArgumentParser(add_help=False)
    truncate.add_argument(
        "--truncate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cut over-long inputs (--truncate) or have them refused (--no-truncate); default: the server's",
    )
    embed = sub.add_parser("embed", parents=[common, inputs, truncate], help="embed texts")
    embed.add_argument("--pooling", choices=["mean", "cls"], default=None)
    embed.add_argument("--no-normalize", action="store_true", help="return raw (un-normalised) vectors")
    _format_option(embed, FORMATS)
    classify = sub.add_parser("classify", parents=[common, inputs, truncate], help="classify texts")
    classify.add_argument("--top-k", type=int, default=1, help="labels per input, best first (0: all)")
    tokens = sub.add_parser("classify-tokens", parents=[common, inputs, truncate], help="label spans of texts")
    tokens.add_argument("--aggregation", choices=AGGREGATIONS, default="simple", help="default: simple")
    fill = sub.add_parser("fill-mask", parents=[common, inputs, truncate], help="fill the mask token of texts")
    fill.add_argument("--top-k", type=int, default=5, help="candidates per mask, best first")
    rerank = sub.add_parser("rerank", parents=[common, truncate], help="rank documents by relevance to a query")
    rerank.add_argument("query", metavar="QUERY")
    rerank.add_argument("texts", nargs="*", metavar="DOC", help="the documents; - reads one per line from stdin")
    rerank.add_argument("--file", type=Path, default=None, help="read the documents from a file, one per line")
    rerank.add_argument("--top-n", type=int, default=None, help="documents to print, best first (default: all)")
    tokenize = sub.add_parser("tokenize", parents=[common, inputs], help="the tokens of texts")
    for command in (classify, tokens, fill, rerank, tokenize):
        _format_option(command, ("jsonl", "json"))
    sub.add_parser("info", parents=[common], help="describe the served model")
    return p


def rpc_error_message(error: grpc.RpcError, target: str) -> str:
    """The one line a failed call prints; a server that cannot be reached is named with how to point elsewhere."""
    message = f"bertmesh: {error.code().name}: {error.details()}"
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        message += f" (no server answering at {target}? set --target host:port or ${TARGET_VARIABLE})"
    return message


def read_texts(texts: Sequence[str], file: Path | None, stdin: TextIO) -> list[str]:
    """The inputs: TEXT arguments, `-` for stdin's lines, and --file's lines, in that order; blank lines skipped."""
    found: list[str] = []
    for text in texts:
        found += _lines(stdin.read()) if text == "-" else [text]
    if file is not None:
        try:
            found += _lines(file.read_text(encoding="utf-8"))
        except OSError as error:
            raise ValueError(f"cannot read {file}: {error.strerror}") from None
    if not found:
        raise ValueError("no inputs: give TEXT arguments, - to read lines from stdin, or --file PATH")
    return found


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _vectors(client: BertmeshClient, args: argparse.Namespace, texts: Sequence[str]) -> FloatArray:
    normalize = False if args.no_normalize else None
    return client.embed(texts, pooling=args.pooling, normalize=normalize, truncate=args.truncate)


def _token(token: pb.Token) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "start": token.start, "end": token.end, "special": token.special}


def _answer(client: BertmeshClient, args: argparse.Namespace, texts: Sequence[str]) -> list[Record]:
    """The records of one request's inputs, one per input."""
    if args.command == "embed":
        vectors = _vectors(client, args, texts)
        return [{"text": t, "embedding": rounded(v)} for t, v in zip(texts, vectors, strict=True)]
    answers: Sequence[dict[str, Any]]
    if args.command == "classify":
        labels = client.classify(texts, top_k=args.top_k, truncate=args.truncate)
        answers = [{"labels": [{"label": s.label, "score": s.score} for s in r]} for r in labels]
    elif args.command == "classify-tokens":
        entities = client.classify_tokens(texts, aggregation=args.aggregation, truncate=args.truncate)
        answers = [{"entities": [asdict(e) for e in r]} for r in entities]
    elif args.command == "fill-mask":
        masks = client.fill_mask(texts, top_k=args.top_k, truncate=args.truncate)
        answers = [{"masks": [[asdict(c) for c in m] for m in r]} for r in masks]
    else:
        tokenized = client.tokenize(texts).results
        answers = [{"tokens": [_token(t) for t in r.tokens]} for r in tokenized]
    return [{"text": t, **a} for t, a in zip(texts, answers, strict=True)]


def _print(client: BertmeshClient, args: argparse.Namespace) -> None:
    """Sends the inputs in requests of at most the server's max_inputs_per_request and prints as answers come."""
    parts = split_inputs(args.texts, client.max_inputs_per_request() if len(args.texts) > 1 else 0)
    # Progress only where it cannot mix with the results: a terminal on stderr, the results going elsewhere.
    shown = len(parts) > 1 and sys.stderr.isatty() and not sys.stdout.isatty()
    progress = Progress(f"bertmesh {args.command}", len(args.texts), sys.stderr if shown else None)
    if args.format == "npy":
        vectors = np.concatenate([progress.after(len(p), _vectors(client, args, p)) for p in parts])
        sys.stdout.flush()
        write_npy(vectors, sys.stdout.buffer)
    else:
        records = (r for p in parts for r in progress.after(len(p), _answer(client, args, p)))
        (write_json if args.format == "json" else write_jsonl)(records, sys.stdout)
    progress.close()


def _print_ranking(client: BertmeshClient, args: argparse.Namespace) -> None:
    """One record per ranked document, best first, with its text (known here, so never sent back)."""
    ranking = client.rerank(args.query, args.texts, top_n=args.top_n, truncate=args.truncate)
    records = (
        {
            "rank": rank,
            "index": r.index,
            "score": r.score,
            "raw_score": r.raw_score,
            "method": ranking.method,
            "document": args.texts[r.index],
        }
        for rank, r in enumerate(ranking.results, 1)
    )
    (write_json if args.format == "json" else write_jsonl)(records, sys.stdout)


def main(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> int:
    """Runs one client command and prints its result; exit 1 on an RPC error, 2 on a usage error."""
    args = _parser(environ).parse_args(list(argv))
    if getattr(args, "format", None) == "npy" and sys.stdout.isatty():
        print(
            f"bertmesh {args.command}: --format npy is binary: redirect it to a file (> vectors.npy)", file=sys.stderr
        )
        return 2
    if hasattr(args, "texts"):
        try:
            args.texts = read_texts(args.texts, args.file, sys.stdin)
        except ValueError as error:
            print(f"bertmesh {args.command}: {error}", file=sys.stderr)
            return 2
    token = args.token_file.read_text().splitlines()[0].strip() if args.token_file else None
    with BertmeshClient(
        args.target, token=token, timeout=args.timeout, split_requests=args.command == "rerank"
    ) as client:
        try:
            if args.command == "info":
                json.dump(json_format.MessageToDict(client.model_info()), sys.stdout, indent=2)
                print()
            elif args.command == "rerank":
                _print_ranking(client, args)
            else:
                _print(client, args)
        except grpc.RpcError as exc:
            print(rpc_error_message(exc, args.target), file=sys.stderr)
            return 1
    return 0
