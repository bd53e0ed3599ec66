"""MicroBatcher in-process: concurrent submits merge into batches, and each gets its own rows."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from flagops.config import ServeConfig
from flagops.serving.batching import MicroBatcher
from flagops.serving.dummy import DummyEmbedderModel, HashEncoder


class Recorder:
    """A batch function that remembers each batch and answers ``(key, item)`` per item."""

    def __init__(self, hold: threading.Event | None = None):
        self.batches: list[tuple[object, list]] = []
        self.hold = hold

    def __call__(self, key, items):
        if self.hold is not None:
            self.hold.wait(5)
        self.batches.append((key, list(items)))
        return [(key, item) for item in items]


class Observer:
    def __init__(self):
        self.batches: list[tuple[int, int]] = []
        self.depths: list[int] = []

    def batch_done(self, size, tokens, seconds):
        self.batches.append((size, tokens))

    def queue_depth(self, waiting):
        self.depths.append(waiting)


def batcher(run, **overrides) -> MicroBatcher:
    settings = {"max_batch_size": 32, "max_batch_tokens": 10_000, "max_wait_ms": 50.0, **overrides}
    return MicroBatcher(run, executor=ThreadPoolExecutor(1), **settings)


def test_concurrent_submits_merge_and_route_back():
    run = Recorder()
    b = batcher(run)

    async def main():
        requests = [[f"r{r}-t{t}" for t in range(r % 3 + 1)] for r in range(10)]
        results = await asyncio.gather(*(b.submit("k", texts, [len(t) for t in texts]) for texts in requests))
        return requests, results

    requests, results = asyncio.run(main())
    for texts, rows in zip(requests, results, strict=True):
        assert rows == [("k", t) for t in texts]  # each request gets exactly its own rows, in order
    assert b.stats.batches == len(run.batches) == 1  # all 20 texts went through one forward pass
    assert b.stats.items == sum(len(t) for t in requests)
    assert b.stats.merged_batches == 1 and b.stats.requests == 10


def test_batches_are_sorted_longest_first():
    run = Recorder()
    b = batcher(run)
    texts = ["bb", "a", "dddd", "ccc"]
    rows = asyncio.run(b.submit("k", texts, [len(t) for t in texts]))
    assert rows == [("k", t) for t in texts]
    assert run.batches == [("k", ["dddd", "ccc", "bb", "a"])]


def test_max_batch_size_and_token_budget_split_batches():
    run = Recorder()
    b = batcher(run, max_batch_size=4)
    asyncio.run(b.submit("k", list(range(10)), [1] * 10))
    assert [len(items) for _, items in run.batches] == [4, 4, 2]

    run = Recorder()
    b = batcher(run, max_batch_tokens=100)  # padded: items x longest
    lengths = [30, 30, 30, 30, 200, 10]
    rows = asyncio.run(b.submit("k", list(range(6)), lengths))
    assert rows == [("k", i) for i in range(6)]
    assert [sorted(items) for _, items in run.batches] == [[0, 1, 2], [3], [4], [5]]  # 200 runs alone


def test_keys_never_share_a_batch():
    run = Recorder()
    b = batcher(run)

    async def main():
        return await asyncio.gather(b.submit(True, ["q1", "q2"], [2, 2]), b.submit(False, ["p1"], [2]))

    queries, passages = asyncio.run(main())
    assert queries == [(True, "q1"), (True, "q2")] and passages == [(False, "p1")]
    assert sorted((key, sorted(items)) for key, items in run.batches) == [(False, ["p1"]), (True, ["q1", "q2"])]


def test_requests_queued_behind_a_running_batch_merge_without_waiting():
    # max_wait 0: nothing waits on purpose, yet requests that arrive while a batch runs
    # share the next one (continuous batching).
    hold = threading.Event()
    run = Recorder(hold)
    observer = Observer()
    b = batcher(run, max_wait_ms=0, observer=observer)

    async def main():
        first = asyncio.ensure_future(b.submit("k", ["first"], [1]))
        await asyncio.sleep(0.05)  # the first batch is running (held)
        later = [asyncio.ensure_future(b.submit("k", [f"t{i}"], [1])) for i in range(5)]
        await asyncio.sleep(0.05)
        depth_while_held = b.waiting
        hold.set()
        return depth_while_held, await first, await asyncio.gather(*later)

    depth, first, later = asyncio.run(main())
    assert depth == 5 and max(observer.depths) == 5
    assert first == [("k", "first")] and later == [[("k", f"t{i}")] for i in range(5)]
    assert [len(items) for _, items in run.batches] == [1, 5]
    assert observer.batches == [(1, 1), (5, 5)] and observer.depths[-1] == 0


def test_a_failing_batch_fails_its_requests_only():
    calls = []

    def run(key, items):
        calls.append(items)
        if "boom" in items:
            raise RuntimeError("model failed")
        return items

    b = batcher(run, max_wait_ms=0)

    async def main():
        with pytest.raises(RuntimeError, match="model failed"):
            await b.submit("k", ["boom"], [1])
        return await b.submit("k", ["fine"], [1])  # the worker lives on

    assert asyncio.run(main()) == ["fine"]


def test_cancelled_requests_are_skipped():
    hold = threading.Event()
    run = Recorder(hold)
    b = batcher(run, max_wait_ms=0)

    async def main():
        running = asyncio.ensure_future(b.submit("k", ["running"], [1]))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(b.submit("k", ["gone"], [1]))
        kept = asyncio.ensure_future(b.submit("k", ["kept"], [1]))
        await asyncio.sleep(0.01)
        gone.cancel()
        hold.set()
        return await running, await kept

    assert asyncio.run(main()) == ([("k", "running")], [("k", "kept")])
    assert [items for _, items in run.batches] == [["running"], ["kept"]]


def test_model_runtime_merges_embedder_requests_exactly():
    # The served path end to end, in-process: 12 concurrent embed() calls, mixed query and
    # passage, give exactly HashEncoder's vectors, in fewer forward passes than requests.
    model = DummyEmbedderModel("m", serve_cfg=ServeConfig(max_wait_ms=50))
    model.load()
    texts = [f"text number {i}" for i in range(12)]

    async def main():
        calls = [model.embed([t], is_query=i % 2 == 0, field="input") for i, t in enumerate(texts)]
        return await asyncio.gather(*calls)

    results = asyncio.run(main())
    model.stop()
    encoder = HashEncoder()
    for i, (vectors, tokens) in enumerate(results):
        np.testing.assert_array_equal(vectors[0], encoder.vector(texts[i], is_query=i % 2 == 0))
        assert tokens == 3
    stats = model.runtime.batcher.stats
    assert stats.items == 12 and stats.batches == 2  # one query batch, one passage batch
    assert stats.merged_batches == 2


def test_adaptive_wait_runs_a_lone_request_at_once_and_always_holds_it():
    # max_wait a minute: a batch that waited for company would miss the 1 s deadline
    for wait, answered in (("adaptive", True), ("always", False)):
        run = Recorder()
        b = batcher(run, max_wait_ms=60_000, wait=wait)

        async def main(b=b):
            try:
                return await asyncio.wait_for(b.submit("k", ["alone"], [1]), 1)
            except TimeoutError:
                return None
            finally:
                b.close()

        assert (asyncio.run(main()) == [("k", "alone")]) is answered, wait


def test_adaptive_wait_holds_the_batch_for_a_request_on_its_way():
    run = Recorder()
    b = batcher(run, max_wait_ms=60_000)

    async def arriving_later():
        with b.on_the_way():
            await asyncio.sleep(0.1)  # its tokens being counted
        return await b.submit("k", ["second"], [1])

    async def main():
        later = asyncio.ensure_future(arriving_later())
        await asyncio.sleep(0.01)
        first = await asyncio.wait_for(b.submit("k", ["first"], [1]), 5)
        return first, await later

    assert asyncio.run(main()) == ([("k", "first")], [("k", "second")])
    assert [sorted(items) for _, items in run.batches] == [["first", "second"]]  # one batch: the first waited


def test_adaptive_wait_stops_when_the_request_on_its_way_is_rejected():
    run = Recorder()
    b = batcher(run, max_wait_ms=60_000)

    async def rejected():
        with pytest.raises(ValueError), b.on_the_way():
            await asyncio.sleep(0.1)
            raise ValueError("too long")  # never submits

    async def main():
        gone = asyncio.ensure_future(rejected())
        await asyncio.sleep(0.01)
        answer = await asyncio.wait_for(b.submit("k", ["first"], [1]), 5)
        await gone
        return answer

    assert asyncio.run(main()) == [("k", "first")]


def test_adaptive_wait_keeps_waiting_while_batches_merge():
    # Under concurrent load (the last batch merged requests) a lone item waits for company as before.
    run = Recorder()
    b = batcher(run, max_wait_ms=200)

    async def main():
        await asyncio.gather(b.submit("k", ["a"], [1]), b.submit("k", ["b"], [1]))  # one merged batch
        first = asyncio.ensure_future(b.submit("k", ["c"], [1]))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(b.submit("k", ["d"], [1]))  # within the 200 ms
        return await first, await second

    asyncio.run(main())
    assert [sorted(items) for _, items in run.batches] == [["a", "b"], ["c", "d"]]


def test_batch_wait_reaches_the_runtime_batcher():
    model = DummyEmbedderModel("m", serve_cfg=ServeConfig(batch_wait="always"))
    model.load()
    assert model.runtime.batcher.wait == "always"
    model.stop()
    with pytest.raises(ValueError, match="batch_wait"):
        ServeConfig(batch_wait="never")
