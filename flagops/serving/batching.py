"""Dynamic micro-batching: texts from concurrent requests share one forward pass.

A request hands its items (texts, or query/passage pairs) with their token lengths to
``MicroBatcher.submit`` under a key; only items with the same key share a batch (an
embedder keys on ``is_query``, since queries and passages read differently). One worker
task closes a batch when it holds ``max_batch_size`` items, when the padded tokens
(items x longest) would pass ``max_batch_tokens``, or when its oldest item has waited
``max_wait_ms``. The batch is sorted by length, run in the model's executor, and each
row goes back to the request it came from. While a batch runs, new items queue, so under
load batches fill without waiting (continuous batching).

Waiting for company (``wait``): ``always`` holds every batch that is not full for up to
``max_wait_ms``, even a lone request's on an idle server. ``adaptive`` (the serving default)
waits only when company is likely: another request is on its way (counted in by
``on_the_way``, its tokens being counted) or the last batch merged requests (the server is
under concurrent load). A lone client then gets its answer without the wait (measured:
single texts at concurrency 1, p50 4.8 ms instead of 23 ms), while concurrent load still
forms full batches (with no wait at all, single texts at concurrency 8 lost 40% of their
throughput: benchmarks/README.md, "Serving under load").
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]


class BatchObserver(Protocol):
    """Where a batcher reports (``flagops.serving.metrics.ModelMetrics``)."""

    def batch_done(self, size: int, tokens: int, seconds: float) -> None: ...

    def queue_depth(self, waiting: int) -> None: ...


@dataclass(eq=False)
class _Item:
    value: Any
    length: int  # tokens, after truncation
    request: int  # which submit() call it came from
    future: asyncio.Future
    enqueued: float  # loop.time(), seconds


@dataclass
class BatchStats:
    """Counts since start: proof that batches merged requests, and how full they ran."""

    batches: int = 0
    items: int = 0
    requests: int = 0
    merged_batches: int = 0  # batches holding items of two or more requests
    largest_batch: int = 0


class MicroBatcher:
    """Gathers items of concurrent ``submit`` calls into micro-batches for ``run``.

    Args:
        run: ``run(key, items) -> results``, one result per item, in order; called in
            ``executor`` with the items sorted longest first.
        max_batch_size: items per batch.
        max_batch_tokens: padded tokens per batch (items x longest item); a single item
            over the budget still runs, alone.
        max_wait_ms: how long the oldest queued item may wait for others to join.
        executor: where ``run`` executes (one worker thread keeps the loop free).
        observer: told of each batch and of the queue depth.
        wait: ``adaptive`` (wait for company only when it is likely) or ``always`` (see above).
    """

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_ms: float,
        executor: Executor | None = None,
        observer: BatchObserver | None = None,
        wait: str = "adaptive",
    ):
        if wait not in ("adaptive", "always"):
            raise ValueError(f"wait={wait!r}: use adaptive or always")
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0  # seconds
        self.executor = executor
        self.observer = observer
        self.wait = wait
        self.stats = BatchStats()
        self.on_the_way_count = 0  # requests counted in by on_the_way, not yet queued
        self._last_merged = False  # did the last batch hold items of two or more requests?
        self._queues: dict[Hashable, deque[_Item]] = {}
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    # ------------------------------------------------------------------ the request side

    async def submit(self, key: Hashable, items: Sequence[Any], lengths: Sequence[int]) -> list[Any]:
        """Queue ``items`` (with their token ``lengths``) and return their results, in order."""
        if len(items) != len(lengths):
            raise ValueError(f"{len(items)} items but {len(lengths)} lengths")
        if not items:
            return []
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.stats.requests += 1
        queue = self._queues.setdefault(key, deque())
        pending = [_Item(v, n, self.stats.requests, loop.create_future(), now) for v, n in zip(items, lengths, strict=True)]
        queue.extend(pending)
        self._report_depth()
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        except asyncio.CancelledError:
            for p in pending:  # the worker skips cancelled items
                p.future.cancel()
            raise

    @contextmanager
    def on_the_way(self) -> Iterator[None]:
        """Count a request that will ``submit`` once this block ends (its tokens are being counted):
        company a batch may wait for. Leaving the block, queued or rejected, wakes the worker to decide again."""
        self.on_the_way_count += 1
        try:
            yield
        finally:
            self.on_the_way_count -= 1
            if self._wakeup is not None:
                self._wakeup.set()

    def _worth_waiting(self) -> bool:
        return self.wait == "always" or self.on_the_way_count > 0 or self._last_merged

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None

    # ------------------------------------------------------------------ the worker

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")

    def _plan(self, queue: deque[_Item]) -> int:
        """How many items from the head of ``queue`` the next batch takes."""
        count, longest = 0, 0
        for item in queue:
            longest_if_added = max(longest, item.length)
            if count and (count + 1) * longest_if_added > self.max_batch_tokens:
                break
            count, longest = count + 1, longest_if_added
            if count == self.max_batch_size:
                break
        return count

    def _oldest_key(self) -> Hashable | None:
        heads = [(q[0].enqueued, i, k) for i, (k, q) in enumerate(self._queues.items()) if q]
        return min(heads)[2] if heads else None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            key = self._oldest_key()
            if key is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            queue = self._queues[key]
            deadline = queue[0].enqueued + self.max_wait
            # Wait for company (where it is likely) until the batch is full or the oldest item's wait is spent.
            while self._plan(queue) == len(queue) < self.max_batch_size and loop.time() < deadline and self._worth_waiting():
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), deadline - loop.time())
                except TimeoutError:
                    break
            # Requests cancelled while we waited (timed out, client gone) give up their places, else
            # they would fill the batch and push a live request's last texts into another wait.
            self._drop_cancelled()
            queue = self._queues.get(key)
            if not queue:
                continue
            batch = [queue.popleft() for _ in range(self._plan(queue))]
            self._report_depth()
            await self._run(key, [item for item in batch if not item.future.done()])

    def _drop_cancelled(self) -> None:
        for key, queue in list(self._queues.items()):
            kept = deque(item for item in queue if not item.future.done())
            if kept:
                self._queues[key] = kept
            else:
                del self._queues[key]

    async def _run(self, key: Hashable, batch: list[_Item]) -> None:
        if not batch:
            return
        batch.sort(key=lambda item: -item.length)  # similar lengths pad little
        started = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self.executor, self.run, key, [item.value for item in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except Exception as exc:  # noqa: BLE001  (each waiting request gets the error)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
        self._record(batch, time.perf_counter() - started)

    def _record(self, batch: list[_Item], seconds: float) -> None:
        s = self.stats
        s.batches += 1
        s.items += len(batch)
        s.largest_batch = max(s.largest_batch, len(batch))
        self._last_merged = len({item.request for item in batch}) > 1
        s.merged_batches += self._last_merged
        if self.observer is not None:
            self.observer.batch_done(len(batch), sum(item.length for item in batch), seconds)

    def _report_depth(self) -> None:
        if self.observer is not None:
            self.observer.queue_depth(self.waiting)
