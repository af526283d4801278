"""Answer caches: Redis (redis-py asyncio) when configured, an in-process LRU otherwise.

Keys carry the model fingerprint, the retrieval settings and the normalised query
(`engine.Query.cache_key`), so a new model or new settings never serve an old answer. A cache
never fails a request: a Redis error is logged, counted, reported by /ready and /metrics, and
the request is answered uncached; after repeated failures a circuit breaker stops calling Redis
for a cool-down, so a Redis that hangs costs one timeout per cool-down, not one per request.
`SingleFlight` makes concurrent identical misses compute once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Cache(Protocol):
    backend: str

    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    async def set_many(self, items: list[tuple[str, bytes]], ttl_s: int) -> None: ...

    async def status(self) -> dict: ...

    async def close(self) -> None: ...


class MemoryCache:
    """LRU with per-entry expiry, for one process (the embedded default), bounded both in
    entries and in bytes (keys + values): a few huge answers cannot grow it past `max_bytes`."""

    backend = "memory"

    def __init__(self, max_entries: int, max_bytes: int = 256 * 2**20, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._clock = clock

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value) + 64  # + the bookkeeping of one entry, roughly

    def _drop(self, key: str) -> None:
        _, value = self._data.pop(key)
        self.bytes -= self._size(key, value)

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [await self.get(k) for k in keys]

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        size = self._size(key, value)
        if key in self._data:
            self._drop(key)
        if size > self.max_bytes:
            return  # larger than the whole cache: not cached at all
        self._data[key] = (self._clock() + ttl_s, value)
        self.bytes += size
        while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._data)))

    async def set_many(self, items: list[tuple[str, bytes]], ttl_s: int) -> None:
        for k, v in items:
            await self.set(k, v, ttl_s)

    async def status(self) -> dict:
        return {"backend": self.backend, "ok": True, "entries": len(self._data), "bytes": self.bytes}

    async def close(self) -> None:
        self._data.clear()
        self.bytes = 0


class CircuitBreaker:
    """Stops calling a failing dependency for a while.

    closed -> (`threshold` failures in a row) -> open: calls are skipped at once for
    `cooldown_s` (doubling on each failed retry, up to `max_cooldown_s`) -> half-open: one call
    goes through; success closes the circuit, failure opens it again. So a Redis that times out
    (a blackholed host) costs one timeout per cool-down, not two per request.
    """

    def __init__(self, threshold: int = 3, cooldown_s: float = 1.0, max_cooldown_s: float = 8.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.open_until: float | None = None
        self._probing = False
        self._clock = clock

    @property
    def state(self) -> str:
        if self.open_until is None:
            return "closed"
        return "open" if self._clock() < self.open_until else "half-open"

    def allow(self) -> bool:
        """Whether to try a call now (in half-open state: only one at a time)."""
        st = self.state
        if st == "closed":
            return True
        if st == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.failures = 0
        self.open_until = None
        self.cooldown_s = self.base_cooldown_s
        self._probing = False

    def failed(self) -> None:
        self.failures += 1
        if self._probing:  # the trial call failed: open again, for longer
            self.cooldown_s = min(self.max_cooldown_s, self.cooldown_s * 2)
        if self._probing or self.failures >= self.threshold:
            self.open_until = self._clock() + self.cooldown_s
        self._probing = False


class RedisCache:
    """Redis through redis-py's asyncio client. Errors degrade to misses, never to failures;
    a circuit breaker skips Redis while it keeps failing. A batch is one MGET and one pipelined
    SET round trip."""

    backend = "redis"

    def __init__(self, url: str, *, timeout_s: float = 0.25, on_error: Callable[[], None] | None = None, breaker: CircuitBreaker | None = None) -> None:
        self.url = url
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
        )
        self._on_error = on_error
        self.breaker = breaker or CircuitBreaker()
        self.skipped = 0  # calls not made because the circuit was open

    def _failed(self, op: str, exc: Exception) -> None:
        self.breaker.failed()
        log.warning("redis %s failed (%s); answering uncached (circuit %s)", op, exc, self.breaker.state)
        if self._on_error:
            self._on_error()

    def _ok(self) -> None:
        if self.breaker.state != "closed":
            log.info("redis is back; circuit closed")
        self.breaker.succeeded()

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        if not self.breaker.allow():
            self.skipped += 1
            return [None] * len(keys)
        try:
            values = await self.client.mget(keys)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed("MGET", exc)
            return [None] * len(keys)
        self._ok()
        return list(values)

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def set_many(self, items: list[tuple[str, bytes]], ttl_s: int) -> None:
        if not items:
            return
        if not self.breaker.allow():
            self.skipped += 1
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for k, v in items:
                    pipe.set(k, v, ex=ttl_s)
                await pipe.execute()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed("SET", exc)
            return
        self._ok()

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self.set_many([(key, value)], ttl_s)

    async def status(self) -> dict:
        """Readiness view: terse (no addresses, no exception text; the log has those)."""
        if self.breaker.state == "open":
            return {"backend": self.backend, "ok": False, "circuit": "open"}
        try:
            await self.client.ping()
            ok = True
        except (RedisError, OSError, asyncio.TimeoutError):
            ok = False
        return {"backend": self.backend, "ok": ok, "circuit": self.breaker.state}

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except (RedisError, OSError):  # pragma: no cover - closing a dead connection
            pass


def redacted(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


class SingleFlight:
    """Concurrent calls with the same key share one computation (in one process).

    The computation runs as its own task, so a cancelled caller (a client that went away, a
    timeout) cancels only its own wait: the others still get the answer.
    """

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Task] = {}

    async def run(self, key: str, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Returns (result, shared): shared is True when another caller started it."""
        task = self._inflight.get(key)
        if task is not None:
            return await asyncio.shield(task), True
        task = asyncio.ensure_future(fn())
        self._inflight[key] = task

        def done(t: asyncio.Task) -> None:
            if self._inflight.get(key) is t:
                del self._inflight[key]
            if not t.cancelled():
                t.exception()  # mark retrieved: a failure nobody awaited must not warn

        task.add_done_callback(done)
        return await asyncio.shield(task), False

    def __len__(self) -> int:
        return len(self._inflight)
