"""What one running app holds (`AppState`, at `app.state.imf`): settings, metrics, the cache,
the worker pool, the engine once loaded, the entity store; and the one way model work leaves
the event loop (`AppState.run`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from service.batcher import Batcher
from service.cache import Cache, SingleFlight
from service.engine import Predictor
from service.entities import EntityStore
from service.errors import Overloaded
from service.metrics import Metrics
from service.query import Query
from service.settings import Settings


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    cache: Cache
    limiter: anyio.CapacityLimiter
    singleflight: SingleFlight = field(default_factory=SingleFlight)
    predictor: Predictor | None = None  # set once everything /ready waits for is loaded
    load_error: str | None = None
    loading: str = "model is loading"  # what start-up is doing now: /ready's and every 503's reason until ready
    encoder_missing: bool = False  # the text encoder is not installed: no new entities (GET /info says so)
    started_at: float = field(default_factory=time.monotonic)
    pending: int = 0  # model jobs running or waiting for a worker
    inflight: int = 0  # admitted API requests not yet answered
    background: set[asyncio.Task] = field(default_factory=set)
    store: EntityStore | None = None  # added entities (IMF_ALLOW_NEW_ENTITIES)
    batcher: Batcher[Query, bytes] | None = None  # set with the predictor: scores the cache misses
    store_version: str | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run model / FAISS work off the event loop, at most IMF_WORKERS at a time.

        A request whose job has not finished within IMF_REQUEST_TIMEOUT_S gets 503 +
        Retry-After (its job is cancelled if it never started; one that is running finishes in
        its thread). With admission (service.middleware.Admission) this bounds both the queue
        and the latency of what is admitted under overload.
        """
        self.pending += 1
        self.metrics.pending.set(self.pending)

        async def job() -> Any:
            try:
                return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)
            finally:
                self.pending -= 1
                self.metrics.pending.set(self.pending)

        task = asyncio.ensure_future(job())
        # a job abandoned by a timeout may still fail later: mark its outcome retrieved
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.settings.request_timeout_s)
        except TimeoutError:
            task.cancel()
            self.metrics.shed.labels("timeout").inc()
            raise Overloaded(f"server busy: the request did not finish within {self.settings.request_timeout_s:g}s; retry shortly") from None
        except asyncio.CancelledError:
            task.cancel()  # the client went away: a job still waiting for a worker is dropped
            raise

    async def batched(self, queries: list[Query]) -> list[bytes]:
        """The encoded answers of `queries`, scored in one pass with the misses of concurrent
        requests (service.batcher); 503 + Retry-After as `run` when not done within
        IMF_REQUEST_TIMEOUT_S (queries whose batch has not started are then left out of it)."""
        assert self.batcher is not None
        self.pending += 1
        self.metrics.pending.set(self.pending)
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):  # no extra task, unlike wait_for
                return await self.batcher.submit(queries)
        except TimeoutError:
            self.metrics.shed.labels("timeout").inc()
            raise Overloaded(f"server busy: the request did not finish within {self.settings.request_timeout_s:g}s; retry shortly") from None
        finally:
            self.pending -= 1
            self.metrics.pending.set(self.pending)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        """Run `coro` in the background (cache writes after the response, the entity sync),
        keeping a reference until done."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task
