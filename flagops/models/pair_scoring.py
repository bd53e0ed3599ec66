"""What every reranker kind shares at inference: length-sorted batched scoring and ``score``.

A leaf module, so the cross-encoder (``models.reranker``) and the LLM kinds
(``models.llm_reranker``) share it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class PairScoring:
    """Mixed into a reranker ``nn.Module`` that has ``tokenize(pairs, max_length=)`` and ``device``."""

    @torch.inference_mode()
    def _scores(self, pairs: Sequence[tuple[str, str]], batch_size: int, max_length: int | None, fn: Callable) -> np.ndarray:
        """``fn(**enc)`` over batches sorted by length (they pad little), float32 (n,) in the order of ``pairs``."""
        self.eval()
        order = np.argsort([-(len(q) + len(p)) for q, p in pairs], kind="stable")
        out = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenize([pairs[i] for i in idx], max_length=max_length)
            out[idx] = fn(**{k: v.to(self.device) for k, v in enc.items()}).float().cpu().numpy()
        return out

    def score(
        self,
        query: str,
        passages: Sequence[str],
        *,
        normalize: bool = False,
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> np.ndarray:
        """Score each passage against ``query``: float32 (n,), sigmoid-mapped when ``normalize``."""
        if isinstance(passages, str):
            raise TypeError("score expects a list of passages, not a single string")
        scores = self.score_pairs([(query, p) for p in passages], batch_size=batch_size, max_length=max_length)
        return sigmoid(scores) if normalize else scores
