"""The dynamic batcher (service.batcher): batches form while the workers are busy, every request
gets its own results in order, a failing request fails alone, a request that gave up is left
out; and with the real engine, an answer does not depend on its batch."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import anyio
import numpy as np
import pytest

from service.answers import encoded_answers
from service.batcher import Batcher
from service.engine import Predictor
from service.query import Query


class Recorder:
    """A compute function (a fake for these unit tests) that records its batches and can be
    held until released, to keep the workers busy while requests queue."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on or set()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, queries: list[int]) -> list[int]:
        self.gate.wait(timeout=10)
        self.batches.append(list(queries))
        bad = self.fail_on & set(queries)
        if bad:
            raise ValueError(f"bad query {sorted(bad)}")
        return [q * 10 for q in queries]


def run(scenario) -> None:
    asyncio.run(scenario())


async def busy(rec: Recorder, max_batch: int = 64) -> tuple[Batcher, asyncio.Future]:
    """A one-worker batcher whose worker is held by a first request (query 0) until
    `rec.gate` is set: what is submitted meanwhile queues."""
    b = Batcher(rec, limiter=anyio.CapacityLimiter(1), workers=1, max_batch=max_batch)
    rec.gate.clear()
    first = asyncio.ensure_future(b.submit([0]))
    while not b._busy:
        await asyncio.sleep(0.001)
    return b, first


def test_one_request_alone_goes_at_once_in_its_own_batch() -> None:
    async def scenario() -> None:
        rec = Recorder()
        b = Batcher(rec, limiter=anyio.CapacityLimiter(2), workers=2, max_batch=8)
        assert await b.submit([1, 2, 3]) == [10, 20, 30]
        assert await b.submit([]) == []
        assert rec.batches == [[1, 2, 3]]

    run(scenario)


def test_requests_waiting_for_a_busy_worker_share_one_batch() -> None:
    async def scenario() -> None:
        rec = Recorder()
        b, first = await busy(rec, max_batch=64)
        others = [asyncio.ensure_future(b.submit([i, 100 + i])) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        assert b.waiting == 10  # queued behind the busy worker
        rec.gate.set()
        assert await first == [0]
        results = await asyncio.gather(*others)
        assert results == [[10 * i, 10 * (100 + i)] for i in range(1, 6)]  # each request its own, in order
        assert rec.batches == [[0], [1, 101, 2, 102, 3, 103, 4, 104, 5, 105]]  # the five in one pass
        assert b.stats.batches == 2 and b.stats.queries == 11

    run(scenario)


def test_batches_never_exceed_the_size_and_a_request_is_never_split() -> None:
    async def scenario() -> None:
        rec = Recorder()
        b, first = await busy(rec, max_batch=4)
        sizes = [3, 2, 2, 6, 1]  # 6 > max_batch: goes alone
        reqs = [asyncio.ensure_future(b.submit(list(range(10 * (j + 1), 10 * (j + 1) + n)))) for j, n in enumerate(sizes)]
        await asyncio.sleep(0.01)
        rec.gate.set()
        await first
        results = await asyncio.gather(*reqs)
        assert [len(r) for r in results] == sizes
        assert [len(batch) for batch in rec.batches] == [1, 3, 4, 6, 1]  # [3], [2, 2], [6], [1]
        assert all(len(batch) <= 4 or len(batch) == 6 for batch in rec.batches)

    run(scenario)


def test_a_failing_request_fails_alone() -> None:
    async def scenario() -> None:
        rec = Recorder(fail_on={13})
        b, first = await busy(rec, max_batch=64)
        good1 = asyncio.ensure_future(b.submit([1, 2]))
        bad = asyncio.ensure_future(b.submit([13]))
        good2 = asyncio.ensure_future(b.submit([3]))
        await asyncio.sleep(0.01)
        rec.gate.set()
        await first
        assert await good1 == [10, 20]
        assert await good2 == [30]
        with pytest.raises(ValueError, match="bad query"):
            await bad
        assert rec.batches[1] == [1, 2, 13, 3]  # tried together, then one by one
        assert b.stats.retried == 1

    run(scenario)


def test_a_request_that_gives_up_before_its_batch_is_left_out() -> None:
    async def scenario() -> None:
        rec = Recorder()
        b, first = await busy(rec, max_batch=64)
        gone = asyncio.ensure_future(b.submit([7]))
        kept = asyncio.ensure_future(b.submit([8]))
        await asyncio.sleep(0.01)
        gone.cancel()  # a client that went away, a request that timed out
        await asyncio.sleep(0)
        rec.gate.set()
        await first
        assert await kept == [80]
        assert rec.batches == [[0], [8]]
        with pytest.raises(asyncio.CancelledError):
            await gone

    run(scenario)


def test_a_wait_collects_batch_mates_when_a_worker_is_free() -> None:
    async def scenario() -> None:
        rec = Recorder()
        b = Batcher(rec, limiter=anyio.CapacityLimiter(2), workers=2, max_batch=64, max_wait_s=0.2)
        first = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.01)  # within the wait: joins the first
        second = asyncio.ensure_future(b.submit([2]))
        assert await asyncio.gather(first, second) == [[10], [20]]
        assert rec.batches == [[1, 2]]

    run(scenario)


def test_a_full_batch_does_not_wait() -> None:
    async def scenario() -> None:
        rec = Recorder()
        b = Batcher(rec, limiter=anyio.CapacityLimiter(1), workers=1, max_batch=2, max_wait_s=30.0)
        assert await asyncio.wait_for(b.submit([1, 2]), 5) == [10, 20]

    run(scenario)


# ------------------------------------------------------------------ with the real engine


@pytest.fixture(scope="module")
def predictor(slice_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    copy = tmp_path_factory.mktemp("batcher") / "bundle"
    shutil.copytree(slice_bundle, copy)
    return Predictor.load(copy, index_kind="exact", save_index=False)


def test_batched_answers_equal_single_answers(predictor: Predictor) -> None:
    """Concurrent requests scored together by the batcher answer exactly what each would get
    alone: the same entities, ranks and known flags, scores equal to float32 rounding."""
    p = predictor
    rng = np.random.default_rng(0)
    test = p.bundle.triples["test"]
    rows = test[rng.choice(len(test), 40, replace=False)].tolist()
    qs = [
        Query(entity=h if i % 2 == 0 else t, relation=r, direction="tail" if i % 2 == 0 else "head", k=5 + i % 7, filter_known=bool(i % 3))
        for i, (h, r, t) in enumerate(rows)
    ]
    alone = [json.loads(a) for q in qs for a in encoded_answers(p, [q])]
    sizes: list[int] = []

    groups, start = [], 0
    while start < len(qs):  # requests of 1 to 3 queries
        groups.append(qs[start:start + 1 + len(groups) % 3])
        start += len(groups[-1])

    async def scenario() -> list[list[bytes]]:
        b = Batcher(lambda batch: encoded_answers(p, batch), limiter=anyio.CapacityLimiter(1), workers=1, max_batch=16, on_batch=sizes.append)
        return await asyncio.gather(*(b.submit(g) for g in groups))

    results = asyncio.run(scenario())
    assert [len(r) for r in results] == [len(g) for g in groups]
    assert max(sizes) > 3 and sum(sizes) == len(qs)  # queries of several requests did share a pass
    together = [json.loads(a) for r in results for a in r]
    for q, want, got in zip(qs, alone, together):
        assert got["query"] == want["query"]
        strip = [{k: v for k, v in x.items() if k not in ("score", "probability")} for x in got["predictions"]]
        assert strip == [{k: v for k, v in x.items() if k not in ("score", "probability")} for x in want["predictions"]], q
        assert [x["score"] for x in got["predictions"]] == pytest.approx([x["score"] for x in want["predictions"]], rel=1e-4)
