"""The backend contract: token ids in, float arrays out. Implementations import torch; this module does not.

Each engine is one class behind this contract (model_server.backend.cuda_engine, .packed_engine,
.transformers_engine), chosen by model_server.backend.factory; an engine computes hidden states and the task's
head turns them into outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from model_server.tasks.base import FloatArray, ModelInput

__all__ = ["Backend", "BackendInfo", "ModelInput"]


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """Where and how the model runs."""

    device: str
    precision: str
    hidden_size: int
    num_labels: int
    engine: str = "transformers"
    kernels: str = ""  # the packed engine's CPU kernels, as chosen at load (model_server.backend.kernel_choice)
    concurrent_batches: int = 1  # batches `run` may be computing at once, each called from its own thread

    @property
    def packed(self) -> bool:
        """Whether batches cost their real tokens (no padding), so the batcher need not group by length."""
        return self.engine in ("packed", "cuda")


class Backend(Protocol):
    """A loaded model. `run` is called from worker threads, never on the event loop, by at most
    `info.concurrent_batches` at once.

    Per input it returns what the task's head returns (model_server.tasks: e.g. the pooled vector [hidden] of an
    embedding, the logits [positions, vocabulary] of fill-mask).
    """

    info: BackendInfo

    def warmup(self, sample: Sequence[int]) -> None:
        """Runs batches of the sample (valid ids, the longest input) and its prefixes, so the first requests do
        not pay for lazy initialisation."""

    def run(self, inputs: Sequence[ModelInput]) -> list[FloatArray]:
        """Computes one batch."""
