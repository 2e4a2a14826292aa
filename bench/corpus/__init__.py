"""The benchmark corpus: texts with their MiniLM token counts, and deterministic sampling of requests."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CORPUS_PATH = Path(__file__).with_name("texts.tsv")
MIN_TOKENS = 8
MAX_TOKENS = 256


@dataclass(frozen=True, slots=True)
class Text:
    """One corpus entry: the text and its token count ([CLS] and [SEP] included)."""

    text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class Request:
    """The texts of one request."""

    texts: tuple[Text, ...]

    @property
    def tokens(self) -> int:
        """Real tokens of the request."""
        return sum(t.tokens for t in self.texts)

    @property
    def strings(self) -> list[str]:
        """The texts as plain strings."""
        return [t.text for t in self.texts]


def load(path: Path = CORPUS_PATH) -> list[Text]:
    """Reads the corpus TSV (tokens<TAB>text)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        tokens, text = line.split("\t", 1)
        out.append(Text(text, int(tokens)))
    return out


def sample_requests(
    corpus: Sequence[Text], count: int, seed: int, min_texts: int = 1, max_texts: int = 8
) -> list[Request]:
    """`count` requests of min_texts..max_texts texts each (uniform), texts drawn without repetition inside a
    request (servers deduplicate identical texts of one request; that would measure less compute)."""
    if not 1 <= min_texts <= max_texts <= len(corpus):
        raise ValueError(f"texts per request {min_texts}..{max_texts} must be within 1..{len(corpus)}")
    rng = random.Random(seed)
    return [Request(tuple(rng.sample(corpus, rng.randint(min_texts, max_texts)))) for _ in range(count)]
