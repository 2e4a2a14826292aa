"""The backend contract: token ids in, float arrays out. Implementations import torch; this module does not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from model_server.tasks import FloatArray, Pooling


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One tokenised input as the model sees it.

    `pooling` is set for embedding models; `positions` lists the token positions whose vocabulary logits a
    fill-mask model returns.
    """

    ids: tuple[int, ...]
    pooling: Pooling | None = None
    positions: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """Where and how the model runs."""

    device: str
    precision: str
    hidden_size: int
    num_labels: int
    engine: str = "transformers"

    @property
    def packed(self) -> bool:
        """Whether batches cost their real tokens (no padding), so the batcher need not group by length."""
        return self.engine == "packed"


class Backend(Protocol):
    """A loaded model. `run` is called from one worker thread at a time, never on the event loop.

    Per input it returns: embedding, the pooled vector [hidden]; sequence classification, logits [labels];
    token classification, logits [tokens, labels]; fill-mask, logits [positions, vocabulary].
    """

    info: BackendInfo

    def warmup(self, sample: Sequence[int]) -> None:
        """Runs batches of the sample (valid ids, the longest input) and its prefixes, so the first requests do
        not pay for lazy initialisation."""

    def run(self, inputs: Sequence[ModelInput]) -> list[FloatArray]:
        """Computes one batch."""
