"""How the client commands print results: one compact JSON line per input, one JSON document, or a .npy array.

JSON Lines is the default because it streams into `jq`, `head` and line-oriented tools and stays one line per
input however long the vectors; `json` is one indented document for people; `npy` is the embeddings alone, as
`numpy.load` reads them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO, TextIO, TypeVar

import numpy as np

from model_server.tasks import FloatArray

FORMATS = ("jsonl", "json", "npy")
Record = Mapping[str, Any]
T = TypeVar("T")


def rounded(vector: FloatArray) -> list[float]:
    """A float32 vector as the shortest decimals that read back to the same float32 values (not float64 noise)."""
    return [float(str(value)) for value in vector.astype(np.float32)]


def write_jsonl(records: Iterable[Record], out: TextIO) -> None:
    """One compact JSON object per line, written as each record comes (long inputs show progress in a pipe)."""
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")


def write_json(records: Iterable[Record], out: TextIO) -> None:
    """One indented JSON array of every record."""
    json.dump(list(records), out, ensure_ascii=False, indent=2)
    out.write("\n")


def write_npy(vectors: FloatArray, out: BinaryIO) -> None:
    """The vectors as one float32 .npy array [inputs, dimensions]."""
    buffer = io.BytesIO()
    np.save(buffer, vectors.astype(np.float32), allow_pickle=False)
    out.write(buffer.getvalue())


class Progress:
    """ "LABEL: done/total inputs" redrawn on one terminal line after each request; silent without a terminal."""

    def __init__(self, label: str, total: int, out: TextIO | None) -> None:
        self.label, self.total, self.out = label, total, out
        self.done = 0

    def after(self, count: int, result: T) -> T:
        """Counts `count` more inputs answered and passes the answer through."""
        self.done += count
        if self.out is not None:
            self.out.write(f"\r{self.label}: {self.done}/{self.total} inputs")
            self.out.flush()
        return result

    def close(self) -> None:
        """Ends the progress line."""
        if self.out is not None and self.done:
            self.out.write("\n")
