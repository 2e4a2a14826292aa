"""Numerics shared by the tasks' post-processing: softmax, sigmoid, L2 normalisation, label names (numpy only)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


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
    # np.linalg.norm of a 1-D float array is sqrt(x.dot(x)): the same number without its Python-level checks.
    norm = math.sqrt(float(vector.dot(vector)))
    return (vector / max(norm, 1e-12)).astype(np.float32)


def label_name(labels: Sequence[str], index: int) -> str:
    """The name of a label index; LABEL_<index> where the checkpoint names fewer labels."""
    return labels[index] if index < len(labels) else f"LABEL_{index}"
