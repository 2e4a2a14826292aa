"""Request limits and the checks that enforce them before any compute (pure functions).

Every message names the field, the value and the limit, and says what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model_server.errors import EmptyInput, InvalidArgument, OverLimit
from model_server.tokenization import Encoded, TokenIds


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one request, resolved against the loaded model."""

    max_inputs_per_request: int
    max_chars_per_input: int
    max_tokens_per_input: int
    max_message_bytes: int
    auto_truncate: bool = False  # requests that do not say are truncated (bertmesh serve --auto-truncate)


def truncation(requested: bool | None, limits: Limits) -> bool:
    """Whether a request's over-long inputs are cut: as it says, or the server's default where it says nothing."""
    return limits.auto_truncate if requested is None else requested


def check_texts(texts: Sequence[str | TokenIds], limits: Limits, field: str = "inputs") -> None:
    """Checks the number of inputs and each input's characters (token-id inputs: that they are not empty)."""
    if not texts:
        raise EmptyInput(f"{field}: at least one input is required")
    if len(texts) > limits.max_inputs_per_request:
        raise OverLimit(
            f"{field}: {len(texts)} inputs exceed max_inputs_per_request={limits.max_inputs_per_request}; "
            "split the request"
        )
    for i, text in enumerate(texts):
        if isinstance(text, TokenIds):
            if not text.ids:
                raise EmptyInput(f"{field}[{i}]: input is empty")
            continue
        check_text(text, limits, f"{field}[{i}]")


def check_text(text: str, limits: Limits, field: str) -> None:
    """Checks that one input is not blank and within the characters limit."""
    if not text or text.isspace():
        raise EmptyInput(f"{field}: input is empty")
    if len(text) > limits.max_chars_per_input:
        raise OverLimit(
            f"{field}: {len(text)} characters exceed max_chars_per_input={limits.max_chars_per_input}; "
            "shorten the input"
        )


def over_token_limit(encodings: Sequence[Encoded], limits: Limits) -> list[int]:
    """Indices of encodings longer than max_tokens_per_input."""
    return [i for i, e in enumerate(encodings) if len(e) > limits.max_tokens_per_input]


def refuse_long(
    index: int | None, tokens: int, limits: Limits, field: str = "inputs", *, paired: bool = False
) -> OverLimit:
    """The error for an input over the token limit when the request did not ask for truncation (index None: the
    field holds one text, named without an index)."""
    counted = " (the query's and the document's together)" if paired else ""
    named = field if index is None else f"{field}[{index}]"
    return OverLimit(
        f"{named}: {tokens} tokens{counted} exceed max_tokens_per_input={limits.max_tokens_per_input}; "
        "shorten the input, or let the server cut it: truncate=true in the request (--truncate in the bertmesh CLI)"
    )


def check_top_k(top_k: int, maximum: int, field: str = "top_k") -> None:
    """Checks a top_k option against its bound."""
    if top_k < 0 or top_k > maximum:
        raise InvalidArgument(f"{field}: {top_k} is outside 0..{maximum}")


def check_pair_room(first_tokens: int, limits: Limits, field: str = "query") -> None:
    """Checks that a pair's first text, with the pair's special tokens, leaves room for its second text's tokens."""
    if first_tokens >= limits.max_tokens_per_input:
        raise InvalidArgument(
            f"{field}: {first_tokens} tokens (special tokens included) leave no room for a document within "
            f"max_tokens_per_input={limits.max_tokens_per_input}; shorten the query"
        )
