"""Text to token ids with the model's own fast tokenizer (Rust `tokenizers`; no torch, no transformers).

Padding and truncation stored in tokenizer.json are switched off: the server counts tokens itself to enforce
its limits, and the batcher pads. Calls release the GIL, so they run in a thread beside the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Encoding, Tokenizer
from tokenizers.implementations.bert_wordpiece import BertWordPieceTokenizer

from model_server.errors import ConfigError


class Encoded:
    """One tokenised input: ids with special tokens; character offsets, word index per token (None: special) and
    special-token flags; whether it was cut; a pair's token types (first sequence 0, second 1) in `type_ids`,
    empty for a single text.

    Offsets, word indices and flags are read from the tokenizer's own encoding on first use: only token
    classification and Tokenize need them, and building ~3 Python objects per token for every embedding held the
    GIL for longer than the Rust tokenizer ran (bench/feed.py).
    """

    __slots__ = ("_offsets", "_source", "_special", "_word_ids", "ids", "truncated", "type_ids")

    def __init__(
        self,
        ids: tuple[int, ...],
        *,
        truncated: bool = False,
        type_ids: tuple[int, ...] = (),
        source: Encoding | None = None,
        offsets: tuple[tuple[int, int], ...] | None = None,
        word_ids: tuple[int | None, ...] | None = None,
        special: tuple[bool, ...] | None = None,
    ) -> None:
        if source is None and (offsets is None or word_ids is None or special is None):
            raise ValueError("Encoded needs its tokenizer encoding, or offsets, word ids and special flags")
        self.ids = ids
        self.truncated = truncated
        self.type_ids = type_ids
        self._source = source
        self._offsets = offsets
        self._word_ids = word_ids
        self._special = special

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Encoded(ids={self.ids!r}, truncated={self.truncated!r}, type_ids={self.type_ids!r})"

    @property
    def offsets(self) -> tuple[tuple[int, int], ...]:
        """Each token's (start, end) character offsets in its text ((0, 0) for specials and id inputs)."""
        if self._offsets is None:
            assert self._source is not None
            self._offsets = tuple(self._source.offsets)
        return self._offsets

    @property
    def word_ids(self) -> tuple[int | None, ...]:
        """Each token's word index (None: a special token)."""
        if self._word_ids is None:
            assert self._source is not None
            self._word_ids = tuple(self._source.word_ids)
        return self._word_ids

    @property
    def special(self) -> tuple[bool, ...]:
        """Whether each token is one the template added ([CLS], [SEP])."""
        if self._special is None:
            assert self._source is not None
            self._special = tuple(bool(s) for s in self._source.special_tokens_mask)
        return self._special


@dataclass(frozen=True, slots=True)
class TokenIds:
    """An input given as ids of the served vocabulary, without special tokens (the server adds those)."""

    ids: tuple[int, ...]


class TextTokenizer:
    """The model's tokenizer, returning every token (no limit applied) or cut to a length."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._full = tokenizer
        # A second instance truncates: Tokenizer's truncation setting is per instance, and both are in use
        # from several threads at once.
        self._cut = Tokenizer.from_str(tokenizer.to_str())
        # Pairs are cut on their second sequence only: a reranker's query stays whole, its document is cut.
        self._cut_second = Tokenizer.from_str(tokenizer.to_str())
        self._cut_length = 0
        self.mask_token = _first_present(tokenizer, ("[MASK]", "<mask>"))
        self.mask_id = tokenizer.token_to_id(self.mask_token) if self.mask_token else None
        self.pad_id = _pad_id(tokenizer)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        # The special tokens the model's template puts around one text ([CLS] ... [SEP] for BERT), read off a
        # real encoding so token-id inputs get exactly what the same text would.
        sample = tokenizer.encode("a")
        content = [i for i, special in enumerate(sample.special_tokens_mask) if not special]
        self._prefix = tuple(sample.ids[: content[0]]) if content else ()
        self._suffix = tuple(sample.ids[content[-1] + 1 :]) if content else ()

    @classmethod
    def from_dir(cls, path: Path) -> TextTokenizer:
        """Loads tokenizer.json, or builds a WordPiece tokenizer from vocab.txt and tokenizer_config.json."""
        try:
            if (path / "tokenizer.json").exists():
                return cls(Tokenizer.from_file(str(path / "tokenizer.json")))
            lowercase = True
            config = path / "tokenizer_config.json"
            if config.exists():
                lowercase = bool(json.loads(config.read_text(encoding="utf-8")).get("do_lower_case", True))
            wordpiece = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lowercase)
            return cls(wordpiece._tokenizer)
        except (OSError, ValueError, Exception) as exc:  # tokenizers raises plain Exception on bad files
            raise ConfigError(f"cannot load the tokenizer in {path}: {exc}") from exc

    def configure_truncation(self, max_tokens: int) -> None:
        """Sets the length inputs are cut to when a request asks for truncation (once, at start-up)."""
        self._cut.enable_truncation(max_length=max_tokens)
        self._cut_second.enable_truncation(max_length=max_tokens, strategy="only_second")
        self._cut_length = max_tokens

    def encode(self, texts: Sequence[str], *, truncate: bool = False, first: str | None = None) -> list[Encoded]:
        """Tokenises texts with special tokens; `truncate` cuts each to the configured length.

        With `first`, each text is the second sequence of a pair after `first` (type ids set), and truncation
        cuts the text only: the caller makes sure `first` leaves room (see `pair_overhead`).
        """
        if first is None:
            tokenizer = self._cut if truncate else self._full
            encodings = tokenizer.encode_batch(list(texts))
        else:
            tokenizer = self._cut_second if truncate else self._full
            encodings = tokenizer.encode_batch([(first, text) for text in texts])
        return [
            Encoded(
                tuple(e.ids),
                truncated=truncate and bool(e.overflowing),
                type_ids=() if first is None else tuple(e.type_ids),
                source=e,
            )
            for e in encodings
        ]

    def wrap(self, inputs: Sequence[TokenIds], *, truncate: bool = False) -> list[Encoded]:
        """Token-id inputs as encodings with the model's special tokens; `truncate` cuts each to the configured
        length (special tokens kept). Offsets are (0, 0): there is no text."""
        specials = len(self._prefix) + len(self._suffix)
        out = []
        for item in inputs:
            ids = item.ids
            cut = truncate and self._cut_length and len(ids) + specials > self._cut_length
            if cut:
                ids = ids[: max(self._cut_length - specials, 0)]
            full = (*self._prefix, *ids, *self._suffix)
            flags = (True,) * len(self._prefix) + (False,) * len(ids) + (True,) * len(self._suffix)
            out.append(
                Encoded(
                    full,
                    offsets=((0, 0),) * len(full),
                    word_ids=tuple(None if f else n for n, f in enumerate(flags)),
                    special=flags,
                    truncated=bool(cut),
                )
            )
        return out

    def pair_overhead(self, first: str) -> int:
        """Tokens a pair spends before its second sequence's own: the first text's and every special token."""
        return len(self._full.encode(first, add_special_tokens=False)) + self._full.num_special_tokens_to_add(True)

    def token_text(self, token_id: int) -> str:
        """A token as text without word-piece markers (for fill-mask candidates)."""
        return self._full.decode([token_id], skip_special_tokens=False).strip()

    def token_string(self, token_id: int) -> str:
        """The raw vocabulary entry of a token (e.g. '##ing')."""
        return self._full.id_to_token(token_id) or ""


def _first_present(tokenizer: Tokenizer, candidates: Sequence[str]) -> str:
    for token in candidates:
        if tokenizer.token_to_id(token) is not None:
            return token
    return ""


def _pad_id(tokenizer: Tokenizer) -> int:
    for token in ("[PAD]", "<pad>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0
