"""Caches: the in-process LRU and single-flight (unit), Redis for real (a redis-server the test
starts on a free loopback port), and the service staying up when Redis goes down mid-run."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.cache import MemoryCache, RedisCache, SingleFlight, redacted
from service.settings import Settings
from tests.helpers import RedisServer, wait_ready, with_


def test_memory_cache_lru_and_ttl() -> None:
    now = [0.0]
    cache = MemoryCache(2, clock=lambda: now[0])

    async def scenario() -> None:
        await cache.set("a", b"1", 10)
        await cache.set("b", b"2", 10)
        assert await cache.get("a") == b"1"  # a is now most recent
        await cache.set("c", b"3", 10)  # evicts b, the least recently used
        assert await cache.get("b") is None and await cache.get("c") == b"3"
        now[0] = 11.0
        assert await cache.get("a") is None  # expired
        assert (await cache.status())["entries"] == 1

    asyncio.run(scenario())


def test_single_flight_computes_once() -> None:
    calls = []

    async def scenario() -> None:
        flight = SingleFlight()

        async def work() -> int:
            calls.append(1)
            await asyncio.sleep(0.05)
            return 42

        results = await asyncio.gather(*(flight.run("k", work) for _ in range(5)))
        assert [r for r, _ in results] == [42] * 5
        assert sum(shared for _, shared in results) == 4
        assert len(calls) == 1
        # failures propagate to every waiter, and the key is free again afterwards
        async def boom() -> int:
            await asyncio.sleep(0.01)
            raise RuntimeError("x")

        outcomes = await asyncio.gather(*(flight.run("e", boom) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        assert (await flight.run("e", work))[0] == 42

    asyncio.run(scenario())


def test_memory_cache_is_bounded_in_bytes() -> None:
    cache = MemoryCache(1000, max_bytes=1000)

    async def scenario() -> None:
        for i in range(20):
            await cache.set(f"k{i}", b"x" * 100, 10)
        st = await cache.status()
        assert st["bytes"] <= 1000 and 1 <= st["entries"] < 20
        assert await cache.get("k19") is not None and await cache.get("k0") is None  # oldest went first
        await cache.set("huge", b"x" * 5000, 10)  # larger than the cache: not stored, nothing evicted for it
        assert await cache.get("huge") is None and await cache.get("k19") is not None
        await cache.set("k19", b"y", 10)  # replacing an entry frees its old size
        assert (await cache.status())["bytes"] <= 1000 and await cache.get("k19") == b"y"
        assert await cache.get_many(["k19", "nope"]) == [b"y", None]

    asyncio.run(scenario())


def test_single_flight_survives_a_cancelled_leader() -> None:
    async def scenario() -> None:
        flight = SingleFlight()
        started = asyncio.Event()

        async def work() -> int:
            started.set()
            await asyncio.sleep(0.1)
            return 7

        leader = asyncio.ensure_future(flight.run("k", work))
        await started.wait()
        waiters = [asyncio.ensure_future(flight.run("k", work)) for _ in range(3)]
        await asyncio.sleep(0)
        leader.cancel()
        results = await asyncio.gather(*waiters)
        assert results == [(7, True)] * 3
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert len(flight) == 0

    asyncio.run(scenario())


def test_circuit_breaker_opens_half_opens_and_closes() -> None:
    from service.cache import CircuitBreaker

    now = [0.0]
    b = CircuitBreaker(threshold=2, cooldown_s=1.0, max_cooldown_s=4.0, clock=lambda: now[0])
    assert b.allow() and b.state == "closed"
    b.failed()
    assert b.state == "closed" and b.allow()
    b.failed()
    assert b.state == "open" and not b.allow()
    now[0] = 1.5
    assert b.state == "half-open" and b.allow() and not b.allow()  # one trial call at a time
    b.failed()  # trial failed: open for twice as long
    assert b.state == "open" and b.cooldown_s == 2.0
    now[0] = 3.4
    assert b.state == "open"
    now[0] = 3.6
    assert b.allow()
    b.succeeded()
    assert b.state == "closed" and b.cooldown_s == 1.0 and b.allow()


def test_redacted() -> None:
    assert redacted("redis://:pw@host:6379/0") == "redis://***@host:6379/0"
    assert redacted("redis://host:6379") == "redis://host:6379"


# ----------------------------------------------------------------------------- real Redis
# (the redis_server fixture, tests/conftest.py: a redis-server of the test's own)


@pytest.mark.redis
def test_redis_cache_round_trip_and_ttl(redis_server: RedisServer) -> None:
    errors = []

    async def scenario() -> None:
        cache = RedisCache(redis_server.url, on_error=lambda: errors.append(1))
        await cache.set("imf:test", b"value", 100)
        assert await cache.get("imf:test") == b"value"
        assert await cache.get("imf:absent") is None
        assert (await cache.status())["ok"] is True
        await cache.close()

    asyncio.run(scenario())
    ttl = redis_server.client().ttl("imf:test")
    assert 90 <= ttl <= 100
    assert errors == []


@pytest.mark.redis
def test_redis_down_degrades_to_misses(redis_server: RedisServer) -> None:
    errors = []
    redis_server.stop()

    async def scenario() -> None:
        cache = RedisCache(redis_server.url, timeout_s=0.2, on_error=lambda: errors.append(1))
        assert await cache.get("k") is None
        await cache.set("k", b"v", 10)  # no exception
        status = await cache.status()
        assert status["ok"] is False and set(status) <= {"backend", "ok", "circuit"}  # terse: /ready shows it
        await cache.close()

    asyncio.run(scenario())
    assert len(errors) == 2


@pytest.mark.redis
def test_blackholed_redis_is_skipped_by_the_circuit_breaker() -> None:
    # A host that accepts connections and never answers: every call would cost its timeout.
    # After `threshold` failures the breaker skips Redis; the calls in between cost nothing.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # never accept(): connects succeed (backlog), reads time out
    errors = []
    try:
        async def scenario() -> None:
            from service.cache import CircuitBreaker

            cache = RedisCache(f"redis://127.0.0.1:{hole.getsockname()[1]}/0", timeout_s=0.2, on_error=lambda: errors.append(1),
                               breaker=CircuitBreaker(threshold=3, cooldown_s=60))
            for _ in range(20):
                assert await cache.get_many(["a", "b"]) == [None, None]
                await cache.set_many([("a", b"1")], 10)
            assert cache.breaker.state == "open" and cache.skipped == 40 - 3
            assert (await cache.status()) == {"backend": "redis", "ok": False, "circuit": "open"}
            await cache.close()

        asyncio.run(scenario())
    finally:
        hole.close()
    assert len(errors) == 3


@pytest.mark.redis
def test_service_with_real_redis_and_redis_failing_mid_run(slice_bundle: Path, redis_server: RedisServer) -> None:
    settings = Settings(bundle=slice_bundle, redis_url=redis_server.url, redis_timeout_s=0.2, save_index=False)
    from model.bundle.format import load_bundle

    b = load_bundle(slice_bundle)
    h, r, _ = b.triples["train"][3].tolist()
    req = {"head": b.vocab.entity_ids[h], "relation": b.vocab.relation_ids[r], "k": 5}
    with TestClient(create_app(settings)) as c:
        ready = wait_ready(c)
        assert ready["cache"] == {"backend": "redis", "ok": True, "circuit": "closed"}
        first = c.post("/predict", json=req).json()
        second = c.post("/predict", json=req).json()
        assert first["cached"] is False and second["cached"] is True
        assert second["predictions"] == first["predictions"]
        keys = [k.decode() for k in redis_server.client().keys("imf:*")]
        assert len(keys) == 1 and first["model"][:16] in keys[0]
        assert 0 < redis_server.client().ttl(keys[0]) <= settings.cache_ttl_s

        redis_server.stop()  # Redis dies mid-run
        third = c.post("/predict", json=req)
        assert third.status_code == 200 and third.json()["cached"] is False
        assert third.json()["predictions"] == first["predictions"]
        ready = c.get("/ready")
        assert ready.status_code == 200 and ready.json()["cache"]["ok"] is False
        metrics = c.get("/metrics").text
        errors = [line for line in metrics.splitlines() if line.startswith("imf_cache_errors_total")]
        assert errors and float(errors[0].split()[-1]) >= 1
        assert "imf_cache_up 0.0" in metrics

        redis_server.start()  # and comes back: caching resumes without a restart
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not c.get("/ready").json()["cache"]["ok"]:
            time.sleep(0.1)
        c.post("/predict", json=req)
        assert c.post("/predict", json=req).json()["cached"] is True


@pytest.mark.redis
def test_new_model_never_serves_old_answers(slice_bundle: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    """Keys carry the model fingerprint: a retrained model misses the old model's entries."""
    import json as _json
    import shutil as _shutil

    import torch
    from safetensors.torch import load_file, save_file

    from model.bundle.format import sha256_file

    other = tmp_path / "other"
    _shutil.copytree(slice_bundle, other)
    state = load_file(str(other / "weights.safetensors"))
    state["entity.weight"] = state["entity.weight"] + 0.5 * torch.randn_like(state["entity.weight"])
    save_file(state, str(other / "weights.safetensors"), metadata={"format": "imf-bundle"})
    manifest = _json.loads((other / "manifest.json").read_text())
    digest = sha256_file(other / "weights.safetensors")
    manifest["files"]["weights.safetensors"] = digest
    manifest["model_fingerprint"] = digest
    (other / "manifest.json").write_text(_json.dumps(manifest))

    from model.bundle.format import load_bundle

    b = load_bundle(slice_bundle)
    h, r, _ = b.triples["train"][5].tolist()
    req = {"head": b.vocab.entity_ids[h], "relation": b.vocab.relation_ids[r], "k": 5}
    base = Settings(bundle=slice_bundle, redis_url=redis_server.url, save_index=False)
    with TestClient(create_app(base)) as c:
        wait_ready(c)
        old = c.post("/predict", json=req).json()
        assert c.post("/predict", json=req).json()["cached"] is True
    with TestClient(create_app(with_(base, bundle=other))) as c:
        wait_ready(c)
        new = c.post("/predict", json=req).json()
    assert new["cached"] is False and new["model"] != old["model"]
    assert len(redis_server.client().keys("imf:*")) == 2
