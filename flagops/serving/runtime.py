"""What every served kind shares: token limits, off-loop threads, micro-batching, metrics.

A kind supplies three functions over its items (texts for an embedder, query/passage
pairs for a reranker) and a batching key:

* ``token_lengths(key, items) -> list[int]``: untruncated token counts; runs on the
  tokenizer thread, which must use its own tokenizer instance (HF fast tokenizers must
  not be shared between threads);
* ``max_length(key) -> int``: the model's own token limit for that key;
* ``run_batch(key, items, max_length) -> rows``: one forward pass; runs on the model thread.

``ModelRuntime.infer`` checks the lengths against the limit (truncate or reject), queues
the items in the ``MicroBatcher`` and returns one row per item, with the token count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flagops.config import ServeConfig
from flagops.serving.batching import MicroBatcher
from flagops.serving.metrics import ModelMetrics
from flagops.serving.protocol import check_token_lengths


class ModelRuntime:
    """Limits, threads and the batcher of one served model."""

    def __init__(
        self,
        name: str,
        cfg: ServeConfig,
        *,
        token_lengths: Callable[[Hashable, list[Any]], list[int]],
        max_length: Callable[[Hashable], int],
        run_batch: Callable[[Hashable, list[Any], int], Sequence[Any]],
    ):
        self.cfg = cfg
        self._token_lengths = token_lengths
        self._max_length = max_length
        self._run_batch = run_batch
        # One model thread: encoding leaves the event loop free for health checks, and
        # torch already uses every core for one batch. One tokenizer thread overlaps
        # counting the next requests' tokens with the running batch.
        self.model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self.tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tokenize-{name}")
        self.metrics = ModelMetrics(name)
        self.batcher = MicroBatcher(
            self._run,
            max_batch_size=cfg.batch_size,
            max_batch_tokens=cfg.max_batch_tokens,
            max_wait_ms=cfg.max_wait_ms,
            executor=self.model_pool,
            observer=self.metrics,
            wait=cfg.batch_wait,
        )

    def limit(self, key: Hashable) -> int:
        """Tokens the model reads per item: its own limit, capped by ``serve.max_tokens``."""
        own = self._max_length(key)
        return own if self.cfg.max_tokens is None else min(own, self.cfg.max_tokens)

    def _run(self, key: Hashable, items: list[Any]) -> Sequence[Any]:
        return self._run_batch(key, items, self.limit(key))

    async def infer(self, key: Hashable, items: list[Any], field: str) -> tuple[list[Any], int]:
        """One result row per item, and the tokens the model read for them."""
        loop = asyncio.get_running_loop()
        with self.batcher.on_the_way():  # a batch forming now may wait for these items
            lengths = await loop.run_in_executor(self.tokenizer_pool, self._token_lengths, key, items)
            lengths = check_token_lengths(lengths, self.limit(key), self.cfg, field)
        rows = await self.batcher.submit(key, items, lengths)
        return rows, sum(lengths)

    def stop(self) -> None:
        self.batcher.close()
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        self.tokenizer_pool.shutdown(wait=False, cancel_futures=True)
