"""Encoding for mining: tokenize once, batch by token count.

``Embedder.encode`` sorts texts by characters and tokenizes each batch. Characters only
roughly predict tokens, so its batches still pad: on the demo's docstrings, sorting by
token count encodes passages about 1.3x and queries about 1.5x faster for the same vectors
(padding changes them by float noise only, about 1e-7). ``TokenSorted`` tokenizes all texts
once without padding, orders them by token count, and pads each batch to its longest member.
It is a view of the ``Embedder`` (every other attribute is the embedder's), so the embedding
cache of ``flagops.evaluation.index`` keys it by the same model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from flagops.models.embedder import Embedder, padding_multiple

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TokenSorted:
    cache_kind = "Embedder"  # same vectors as Embedder.encode: the embedding cache shares them

    def __init__(self, embedder: Embedder):
        self.embedder = embedder

    def __getattr__(self, name: str):
        return getattr(self.embedder, name)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], *, is_query: bool = False, batch_size: int = 32, progress: str | None = None) -> np.ndarray:
        """Float32 (n, dim) in the order of ``texts``, like ``Embedder.encode``."""
        e, s = self.embedder, self.embedder.settings
        e.eval()
        if is_query and s.query_instruction:
            texts = [s.query_instruction + t for t in texts]
        limit = s.query_max_len if is_query else s.passage_max_len
        tokens = e.tokenizer(list(texts), truncation=True, max_length=limit)
        names = [k for k in _MODEL_INPUTS if k in tokens]
        order = np.argsort([-len(ids) for ids in tokens["input_ids"]], kind="stable")
        out = np.empty((len(texts), e.model.config.hidden_size), dtype=np.float32)
        starts = range(0, len(order), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=progress, unit="batch", leave=False)
        for start in starts:
            rows = order[start : start + batch_size]
            batch = e.tokenizer.pad(
                {k: [tokens[k][i] for i in rows] for k in names},
                return_tensors="pt",
                pad_to_multiple_of=padding_multiple(limit, e.pad_to_multiple_of),
            )
            out[rows] = e(**{k: v.to(e.device) for k, v in batch.items()}).float().cpu().numpy()
        return out


def token_sorted(teacher):
    """``TokenSorted(teacher)`` for an ``Embedder``; any other encoder as it is."""
    return TokenSorted(teacher) if isinstance(teacher, Embedder) else teacher
