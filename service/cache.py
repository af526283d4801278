"""Answer caches: Redis (redis-py asyncio) when configured, an in-process LRU otherwise.

Keys carry the model fingerprint and the normalised query (`engine.Query.cache_key`), so a new
model never serves an old model's answers. A cache never fails a request: a Redis error is
logged, counted, reported by /ready and /metrics, and the request is answered uncached.
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

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def status(self) -> dict: ...

    async def close(self) -> None: ...


class MemoryCache:
    """LRU with per-entry expiry, for one process (the embedded default)."""

    backend = "memory"

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._clock = clock

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self._data[key] = (self._clock() + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def status(self) -> dict:
        return {"backend": self.backend, "ok": True, "entries": len(self._data)}

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Redis through redis-py's asyncio client. Errors degrade to misses, never to failures."""

    backend = "redis"

    def __init__(self, url: str, *, timeout_s: float = 0.25, on_error: Callable[[], None] | None = None) -> None:
        self.url = url
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
        )
        self._on_error = on_error
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def _failed(self, op: str, exc: Exception) -> None:
        self.last_error = f"{op}: {type(exc).__name__}: {exc}"
        self.last_error_at = time.time()
        log.warning("redis %s failed (%s); answering uncached", op, exc)
        if self._on_error:
            self._on_error()

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.client.get(key)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed("GET", exc)
            return None
        self.last_error = None
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            await self.client.set(key, value, ex=ttl_s)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed("SET", exc)

    async def status(self) -> dict:
        try:
            await self.client.ping()
            ok, error = True, None
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        return {"backend": self.backend, "ok": ok, **({"error": error} if error else {})}

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
    """Concurrent calls with the same key share one computation (in one process)."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future] = {}

    async def run(self, key: str, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Returns (result, shared): shared is True when another caller computed it."""
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut), True
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await fn()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: a failure with no waiters must not warn
            raise
        else:
            fut.set_result(result)
            return result, False
        finally:
            self._inflight.pop(key, None)
