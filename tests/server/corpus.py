"""Sentences of mixed lengths for parity tests (short, medium, long; punctuation and accents)."""

from __future__ import annotations

SENTENCES = [
    "hello world",
    "A man is eating food.",
    "The new movie is awesome and I would watch it again tomorrow!",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "Café crème brûlée: naïve façade — déjà vu.",
    "Why?",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 12),
    "Transformers use self-attention to weigh the influence of every token on every other token in a sequence, "
    "which lets them model long-range dependencies that recurrent networks struggle with.",
    "42",
    "Kubernetes schedules pods onto nodes; Istio shifts traffic between versions by weight.",
]
