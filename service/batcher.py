"""Dynamic batching of cache misses: the queries of concurrent requests scored in one pass.

Scoring B queries together reads each entity table once instead of B times (a (B, d) x (d, N)
product instead of B (1, d) x (d, N) ones), which on the CPU costs a fraction per query of
scoring them one by one (docs/benchmarks.md section 5). `Batcher` collects the queries waiting
for a worker and hands them to one as a single batch, as model servers do (Triton's dynamic
batcher, Ray Serve's @serve.batch):

- A worker free and nothing batching: the queries go at once (after one turn of the event loop,
  so requests that arrived together go together), or after IMF_BATCH_WAIT_MS when that is set.
  A lone client never waits for batch-mates that are not coming.
- Every worker busy: queries wait, and the next worker to finish takes everything waiting, up to
  IMF_BATCH_MAX queries. Batches grow with the load by themselves.
- One request's queries always go in the same batch; a request with more than IMF_BATCH_MAX
  queries (POST /predict/batch) goes alone.
- A query's answer does not depend on its batch (each query's scores are computed from its own
  row; tests/test_batcher.py). A batch that fails is computed again request by request, so a
  failing query fails its own request only. A request that gives up (timeout, client gone)
  before its batch starts is left out of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

log = logging.getLogger(__name__)

Q = TypeVar("Q")
R = TypeVar("R")


@dataclass
class _Pending(Generic[Q, R]):
    queries: Sequence[Q]
    future: asyncio.Future[list[R]]


@dataclass
class BatchStats:
    """What the batcher has done, for /metrics and the tests."""

    batches: int = 0
    queries: int = 0
    retried: int = 0  # batches computed again request by request after a failure
    sizes: list[int] = field(default_factory=list)  # the last few batch sizes (queries)

    def record(self, size: int) -> None:
        self.batches += 1
        self.queries += size
        self.sizes = [*self.sizes[-99:], size]


class Batcher(Generic[Q, R]):
    """Runs `compute` (a list of queries -> one result per query, called in a worker thread) on
    batches of the queries submitted concurrently. `limiter` bounds the worker threads (shared
    with the app's other model work); at most `workers` batches are in flight."""

    def __init__(
        self,
        compute: Callable[[list[Q]], list[R]],
        *,
        limiter: anyio.CapacityLimiter,
        workers: int,
        max_batch: int = 64,
        max_wait_s: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or workers < 1 or max_wait_s < 0:
            raise ValueError("max_batch and workers must be >= 1, max_wait_s >= 0")
        self.compute = compute
        self.limiter = limiter
        self.workers = workers
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._waiting: deque[_Pending[Q, R]] = deque()
        self._waiting_queries = 0
        self._busy = 0  # batches taken and not finished
        self._collecting = False  # a dispatch is gathering its batch
        self._full = asyncio.Event()  # set when the waiting queries fill a batch
        self._tasks: set[asyncio.Task] = set()

    @property
    def waiting(self) -> int:
        """Queries waiting for a batch."""
        return self._waiting_queries

    async def submit(self, queries: Sequence[Q]) -> list[R]:
        """The results of `queries`, in order, computed in some batch. Cancelling the caller
        drops its queries if their batch has not started yet."""
        if not queries:
            return []
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(list(queries), future))
        self._waiting_queries += len(queries)
        if self._waiting_queries >= self.max_batch:
            self._full.set()
        self._kick()
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.cancel()  # still waiting: left out of its batch (a running one finishes)
            raise

    def _kick(self) -> None:
        """Start gathering a batch when there is work and a worker for it."""
        if self._waiting and not self._collecting and self._busy < self.workers:
            self._collecting = True
            task = asyncio.ensure_future(self._dispatch())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Pending[Q, R]]:
        """Waiting requests, oldest first, up to max_batch queries (at least one request)."""
        batch: list[_Pending[Q, R]] = []
        size = 0
        while self._waiting:
            item = self._waiting[0]
            if item.future.done():  # gave up while waiting
                self._waiting.popleft()
                self._waiting_queries -= len(item.queries)
                continue
            if batch and size + len(item.queries) > self.max_batch:
                break
            self._waiting.popleft()
            self._waiting_queries -= len(item.queries)
            batch.append(item)
            size += len(item.queries)
        if self._waiting_queries < self.max_batch:
            self._full.clear()
        return batch

    async def _dispatch(self) -> None:
        try:
            if self.max_wait_s > 0 and self._waiting_queries < self.max_batch:
                try:
                    await asyncio.wait_for(self._full.wait(), self.max_wait_s)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)  # requests that arrived in the same turn join
            batch = self._take()
        finally:
            self._collecting = False
        if not batch:
            self._kick()
            return
        self._busy += 1
        self._kick()  # another free worker may start gathering the next batch
        try:
            outcomes = await anyio.to_thread.run_sync(self._run, [item.queries for item in batch], limiter=self.limiter)
        except Exception as exc:  # a batch of one request that failed, or the pool itself
            outcomes = [exc] * len(batch)
        except BaseException:  # cancelled (shut-down): nobody waits for these any more
            for item in batch:
                item.future.cancel()
            raise
        finally:
            self._busy -= 1
        for item, outcome in zip(batch, outcomes):
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        self._kick()

    def _run(self, groups: list[Sequence[Q]]) -> list[list[R] | BaseException]:
        """In a worker thread: every group's results from one `compute` call; when it fails,
        each group computed alone, so only the failing ones get the error."""
        flat = [q for g in groups for q in g]
        self.stats.record(len(flat))
        if self.on_batch is not None:
            self.on_batch(len(flat))
        try:
            results = self.compute(flat)
            if len(results) != len(flat):
                raise RuntimeError(f"batch computed {len(results)} results for {len(flat)} queries")
        except Exception:
            if len(groups) == 1:
                raise
            log.warning("a batch of %d requests failed; computing them one by one", len(groups), exc_info=True)
            self.stats.retried += 1
            return [self._alone(g) for g in groups]
        out: list[list[R] | BaseException] = []
        start = 0
        for g in groups:
            out.append(results[start:start + len(g)])
            start += len(g)
        return out

    def _alone(self, group: Sequence[Q]) -> list[R] | BaseException:
        try:
            return self.compute(list(group))
        except Exception as exc:  # this request's own error, handed to it
            return exc
