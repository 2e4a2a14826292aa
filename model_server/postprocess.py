"""Model outputs to task results: pooling normalisation, label scores, entities, mask candidates (numpy only)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from model_server.tasks import (
    Aggregation,
    Classification,
    Entity,
    EntityList,
    FloatArray,
    LabelScore,
    MaskCandidates,
    TokenScore,
)
from model_server.tokenization import Encoded

OUTSIDE_LABELS = frozenset({"O"})


def softmax(logits: FloatArray) -> FloatArray:
    """Softmax over the last axis, computed stably in float32."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probs: FloatArray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return probs


def sigmoid(logits: FloatArray) -> FloatArray:
    """Element-wise logistic function (multi-label classification)."""
    probs: FloatArray = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    return probs


def l2_normalize(vector: FloatArray) -> FloatArray:
    """The vector scaled to unit length (a zero vector stays zero)."""
    norm = float(np.linalg.norm(vector))
    return (vector / max(norm, 1e-12)).astype(np.float32)


def classification(
    logits: FloatArray, labels: Sequence[str], *, multi_label: bool, top_k: int, return_logits: bool
) -> Classification:
    """Label probabilities of one input, best first, cut to top_k (0: all)."""
    scores = sigmoid(logits) if multi_label else softmax(logits)
    order = np.argsort(-scores, kind="stable")
    if top_k:
        order = order[:top_k]
    return Classification(
        labels=tuple(LabelScore(_label(labels, int(i)), int(i), float(scores[i])) for i in order),
        logits=logits.copy() if return_logits else None,
    )


def _label(labels: Sequence[str], index: int) -> str:
    return labels[index] if index < len(labels) else f"LABEL_{index}"


def mask_candidates(mask_logits: FloatArray, top_k: int, token_text: Callable[[int], str]) -> MaskCandidates:
    """Top-k candidate tokens for each mask row of logits, with softmax probabilities."""
    result = []
    for row in mask_logits:
        probs = softmax(row)
        k = min(top_k, probs.shape[0])
        top = np.argpartition(-probs, k - 1)[:k]
        top = top[np.argsort(-probs[top], kind="stable")]
        result.append(tuple(TokenScore(int(t), token_text(int(t)), float(probs[t])) for t in top))
    return tuple(result)


def _split_tag(label: str) -> tuple[str, str]:
    """('B' | 'I', entity type) of an IOB label; labels without a prefix count as a continuation."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


Piece = tuple[str, float, int, int]  # label, score, start, end


def _token_entities(probs: FloatArray, encoded: Encoded, labels: Sequence[str]) -> list[Piece]:
    """(label, score, start, end, word) of each non-special token, by the argmax label."""
    out = []
    for t, (special, (start, end)) in enumerate(zip(encoded.special, encoded.offsets, strict=True)):
        if special or start == end:
            continue
        best = int(np.argmax(probs[t]))
        out.append((_label(labels, best), float(probs[t][best]), start, end))
    return out


def _word_entities(probs: FloatArray, encoded: Encoded, labels: Sequence[str], strategy: Aggregation) -> list[Piece]:
    """One (label, score, start, end, word) per word, from its sub-tokens by the FIRST/AVERAGE/MAX rule."""
    words: dict[int, list[int]] = {}
    for t, (special, word) in enumerate(zip(encoded.special, encoded.word_ids, strict=True)):
        if not special and word is not None and encoded.offsets[t][0] != encoded.offsets[t][1]:
            words.setdefault(word, []).append(t)
    out = []
    for tokens in words.values():
        rows = probs[tokens]
        if strategy is Aggregation.FIRST:
            scores = rows[0]
        elif strategy is Aggregation.MAX:
            scores = rows[int(np.argmax(rows.max(axis=1)))]
        else:
            scores = rows.mean(axis=0)
        best = int(np.argmax(scores))
        start, end = encoded.offsets[tokens[0]][0], encoded.offsets[tokens[-1]][1]
        out.append((_label(labels, best), float(scores[best]), start, end))
    return out


def entities(
    logits: FloatArray,
    encoded: Encoded,
    text: str,
    labels: Sequence[str],
    strategy: Aggregation,
    *,
    include_outside: bool,
) -> EntityList:
    """Entities of one input from its per-token logits, grouped as the Hugging Face pipeline does."""
    probs = softmax(logits)
    if strategy in (Aggregation.NONE, Aggregation.SIMPLE):
        pieces = _token_entities(probs, encoded, labels)
    else:
        pieces = _word_entities(probs, encoded, labels, strategy)
    if strategy is Aggregation.NONE:
        found = [Entity(label, score, s, e, text[s:e]) for label, score, s, e in pieces]
    else:
        found = _group(pieces, text)
    return tuple(e for e in found if include_outside or e.label not in OUTSIDE_LABELS)


def _group(pieces: Sequence[Piece], text: str) -> list[Entity]:
    """Merges adjacent pieces of the same entity type unless a piece starts a new one (B-)."""
    groups: list[list[Piece]] = []
    for piece in pieces:
        if groups:
            bi, tag = _split_tag(piece[0])
            _, last_tag = _split_tag(groups[-1][-1][0])
            if tag == last_tag and bi != "B":
                groups[-1].append(piece)
                continue
        groups.append([piece])
    result = []
    for group in groups:
        _, tag = _split_tag(group[0][0])
        start, end = group[0][2], group[-1][3]
        score = float(np.mean([p[1] for p in group]))
        result.append(Entity(tag, score, start, end, text[start:end]))
    return result
