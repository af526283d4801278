"""The store of added entities kept durable and honest (service/entities.py, service/added.py,
service/lifespan.py, model/files.py):

- a Redis that may evict or does not persist is refused as the entity store (POST /entities
  answers 501 naming the fix), IMF_STORE_REDIS_URL keeps entities apart from the LRU cache, and
  an acknowledged entity survives a restart of both Redis servers;
- the view's generation hashes every added entity's content, a replica serving a stale record
  under a reused id serves the store's version, and the store's version never repeats;
- IMF_MAX_NEW_ENTITIES answers 409; the file store appends (one fsynced JSON line per record),
  skips a torn last line, keeps the event loop free and gives up on a held lock with 503;
- atomic writes fsync the file and its folder, and stale temporaries are removed at start.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.helpers import CACHE_OPTIONS, STORE_OPTIONS, RedisServer, wait_ready

ALPHA = {"id": "x/1", "name": "Alpha", "description": "the first letter"}
BETA = {"id": "x/1", "name": "Beta", "description": "the second letter"}


DURABLE = tuple(STORE_OPTIONS)
LRU_CACHE = (*CACHE_OPTIONS, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")  # the compose cache's flags


@pytest.fixture()
def make_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers with the given arguments, each in a folder of its own; all stopped after."""
    started: list[RedisServer] = []

    def make(*args: str) -> RedisServer:
        folder = tmp_path / f"redis{len(started)}"
        folder.mkdir()
        server = RedisServer(folder, options=list(args))
        server.start()
        started.append(server)
        return server

    yield make
    for s in started:
        s.stop()


@pytest.fixture()
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync is called on from now on (the calls still happen)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def _settings(bundle: Path, state: Path, **kw: object) -> Settings:
    """Settings for an app adding entities; `state`: its IMF_STATE_DIR (used by the file store
    only, but always the test's own, never the working directory)."""
    return Settings(bundle=bundle, state_dir=state, save_index=False, allow_new_entities=True, entity_sync_s=0.2, candidates=60, max_k=50, **kw)  # type: ignore[arg-type]


def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# ----------------------------------------------------------------------------- item 3: durable, honest Redis store


@pytest.mark.redis
def test_lru_redis_without_persistence_is_refused_as_the_entity_store(extras_bundle: Path, tmp_path: Path, make_redis: Callable[..., RedisServer]) -> None:
    lru = make_redis(*LRU_CACHE)
    with TestClient(create_app(_settings(extras_bundle, tmp_path / "state", redis_url=lru.url))) as c:
        wait_ready(c)
        r = c.post("/entities", json=ALPHA)
        assert r.status_code == 501, r.text
        message = r.json()["error"]["message"]
        assert "maxmemory-policy" in message and "IMF_STORE_REDIS_URL" in message, message
        # reads keep working: the bundle is served
        assert c.get("/entities", params={"q": "a"}).status_code == 200
    assert lru.client().keys("imf:entities:*") == []  # nothing was stored where it could be evicted


@pytest.mark.redis
def test_store_redis_url_keeps_entities_apart_from_the_cache_and_they_survive_restarts(extras_bundle: Path, tmp_path: Path, make_redis: Callable[..., RedisServer]) -> None:
    """Compose's layout: the LRU cache and a durable store. A 201-acknowledged entity is in the
    store (not the cache), and is served again after both Redis servers restart (kill -9)."""
    cache, store = make_redis(*LRU_CACHE), make_redis(*DURABLE)
    settings = _settings(extras_bundle, tmp_path / "state", redis_url=cache.url, store_redis_url=store.url)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        r = c.post("/entities", json=ALPHA)
        assert r.status_code == 201, r.text
    assert cache.client().keys("imf:entities:*") == []
    assert store.client().keys("imf:entities:*")
    for s in (cache, store):  # a host restart: no clean shutdown
        s.kill()
        s.start()
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        found = c.get("/entities", params={"q": "x/1"}).json()["entities"]
        assert [e["entity"] for e in found] == ["x/1"] and found[0]["name"] == "Alpha"


@pytest.mark.redis
def test_managed_redis_without_config_is_used_with_a_warning(extras_bundle: Path, tmp_path: Path, make_redis: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture) -> None:
    """A managed Redis that disables CONFIG cannot be checked: the service warns and proceeds."""
    managed = make_redis(*DURABLE, "--rename-command", "CONFIG", "")
    with caplog.at_level("WARNING"), TestClient(create_app(_settings(extras_bundle, tmp_path / "state", store_redis_url=managed.url))) as c:
        wait_ready(c)
        assert c.post("/entities", json=ALPHA).status_code == 201
    assert any("CONFIG" in r.getMessage() for r in caplog.records if r.levelname == "WARNING"), [r.getMessage() for r in caplog.records]


def _record(p, key: str, name: str, seed: int) -> dict:  # noqa: ANN001 - a Predictor
    vec = np.random.default_rng(seed).normal(size=p.model.cfg.modalities["text"]).astype(np.float32)
    vec /= np.linalg.norm(vec)
    return {"id": key, "name": name, "description": "", "numeric": {}, "text_vector": base64.b64encode(vec.tobytes()).decode(), "model": p.bundle.fingerprint}


def test_generation_changes_when_content_changes_under_the_same_id(extras_bundle: Path) -> None:
    from service.engine import Predictor

    p = Predictor.load(extras_bundle, candidates=60, index_kind="flat", save_index=False)
    assert p.added.add_records([_record(p, "x/1", "Alpha", 1)]) == 1
    alpha_generation, alpha_key = p.added.view.generation, p.retrieval
    fresh = Predictor.load(extras_bundle, candidates=60, index_kind="flat", save_index=False)  # another replica
    assert fresh.added.add_records([_record(fresh, "x/1", "Beta", 2)]) == 1
    assert fresh.added.view.generation != alpha_generation and fresh.retrieval != alpha_key
    # a stale record under a served id is replaced in place by the store's version
    e = p.added.lookup("x/1")
    assert p.added.add_records([_record(p, "x/1", "Gamma", 3)]) == 0  # nothing appended
    assert p.added.lookup("x/1") == e and p.added.info(e)["name"] == "Gamma" and len(p.added.ids) == 1


@pytest.mark.redis
def test_replica_serving_a_stale_record_serves_the_stores_version(extras_bundle: Path, tmp_path: Path, make_redis: Callable[..., RedisServer]) -> None:
    """The store was reset (FLUSHALL stands for a lost store) and x/1 reused: the old replica
    answers the POST with the store's entity and picks up another replica's record by sync, and
    the other replica never gets the old replica's cached answer (the shared cache's keys carry
    the generation, a digest of the entities' contents)."""
    cache, store = make_redis(*LRU_CACHE), make_redis(*DURABLE)
    settings = _settings(extras_bundle, tmp_path / "state", redis_url=cache.url, store_redis_url=store.url)
    with TestClient(create_app(settings)) as old:
        wait_ready(old)
        rel = old.get("/relations").json()["relations"][0]["relation"]
        query = {"head": "x/1", "relation": rel, "k": 3}
        assert old.post("/entities", json=ALPHA).status_code == 201
        store.client().flushall()
        r = old.post("/entities", json=BETA)
        assert r.status_code == 201 and r.json()["name"] == "Beta", r.text
        assert _until(lambda: old.post("/predict", json=query).json()["cached"])  # in the shared cache
        store.client().flushall()
        with TestClient(create_app(settings)) as other:
            wait_ready(other)
            assert other.post("/entities", json={**ALPHA, "name": "Delta"}).status_code == 201
            r = other.post("/predict", json=query).json()
            assert r["cached"] is False and r["query"]["head"]["name"] == "Delta", r
            assert _until(lambda: old.get("/entities", params={"q": "x/1"}).json()["entities"][0]["name"] == "Delta")
            assert old.post("/predict", json=query).json()["query"]["head"]["name"] == "Delta"


@pytest.mark.redis
def test_store_version_never_repeats_after_a_reset(make_redis: Callable[..., RedisServer]) -> None:
    from service.entities import RedisStore

    server = make_redis(*DURABLE)

    async def go() -> None:
        store = RedisStore(server.url, "f" * 64, 1.0)
        try:
            await store.add({"id": "x/1", "name": "Alpha"})
            before = await store.version()
            server.client().flushall()
            await store.add({"id": "x/1", "name": "Beta"})
            assert await store.version() != before
        finally:
            await store.close()

    asyncio.run(go())


# ----------------------------------------------------------------------------- item 4: cap, file store off the loop


@pytest.mark.parametrize("backend", ["file", pytest.param("redis", marks=pytest.mark.redis)])
def test_cap_on_added_entities_answers_409(extras_bundle: Path, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    where: dict = {}
    if backend == "redis":
        where = {"store_redis_url": request.getfixturevalue("make_redis")(*DURABLE).url}
    with TestClient(create_app(_settings(extras_bundle, tmp_path / "state", max_new_entities=2, **where))) as c:
        wait_ready(c)
        for i in range(2):
            assert c.post("/entities", json={"name": f"Entity {i}", "id": f"cap/{i}"}).status_code == 201
        r = c.post("/entities", json={"name": "One too many", "id": "cap/2"})
        assert r.status_code == 409, r.text
        assert "IMF_MAX_NEW_ENTITIES" in r.json()["error"]["message"]
        assert c.post("/entities", json={"name": "Entity 0", "id": "cap/0"}).status_code == 200  # a retry still answers
        assert c.get("/info").json()["new_entities"]["added"] == 2


def test_file_store_appends_fsynced_lines_and_skips_a_torn_last_line(tmp_path: Path, fsync_calls: list[str]) -> None:
    from service.entities import FileStore

    synced = fsync_calls
    store = FileStore(tmp_path, "f" * 64)

    async def go() -> None:
        await store.add({"id": "a", "name": "A"})
        inode = store.path.stat().st_ino
        await store.add({"id": "b", "name": "B"})
        assert store.path.stat().st_ino == inode  # appended in place, not rewritten and renamed
        assert str(store.path) in synced
        with open(store.path, "a") as fh:  # a crash in the middle of a write
            fh.write('{"id": "torn", "na')
        assert [r["id"] for r in await store.load()] == ["a", "b"]
        await store.add({"id": "c", "name": "C"})
        assert [r["id"] for r in await store.load()] == ["a", "b", "c"]
        assert store.path.stat().st_ino == inode

    asyncio.run(go())
    lines = store.path.read_text().splitlines()
    assert all(json.loads(line)["id"] for line in lines if "torn" not in line)


def _hold_lock(path: Path, seconds: float, held: threading.Event) -> threading.Thread:
    """Another writer holding the file store's lock for `seconds` (in a thread of its own)."""

    def hold() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            held.set()
            time.sleep(seconds)
            fcntl.flock(fh, fcntl.LOCK_UN)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    held.wait(5)
    return t


def test_file_store_keeps_the_loop_free_and_gives_up_on_a_held_lock(tmp_path: Path) -> None:
    from service.entities import FileStore

    store = FileStore(tmp_path, "f" * 64)
    store.lock_timeout_s = 0.5  # an attribute, not the argument: the same test ran on the store before it had a timeout
    holder = _hold_lock(store.path.with_name(store.path.name + ".lock"), 3.0, threading.Event())
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def go() -> None:
        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0)
        try:
            with pytest.raises(TimeoutError, match="lock"):
                await store.add({"id": "a", "name": "A"})
        finally:
            beat.cancel()

    asyncio.run(go())
    assert ticks >= 5  # the loop kept running while the add waited (0.5 s of 10 ms ticks)
    holder.join()
    assert asyncio.run(store.load()) == []


def test_post_answers_503_when_the_file_store_lock_is_held(extras_bundle: Path, tmp_path: Path) -> None:
    settings = _settings(extras_bundle, tmp_path / "state", request_timeout_s=1.0)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        store = c.app.state.imf.store  # type: ignore[attr-defined]
        holder = _hold_lock(store.path.with_name(store.path.name + ".lock"), 4.0, threading.Event())
        r = c.post("/entities", json=ALPHA)
        assert r.status_code == 503 and r.json()["error"]["type"] == "store_unavailable", r.text
        assert c.get("/health").status_code == 200
        holder.join()
        assert c.post("/entities", json=ALPHA).status_code == 201


# ----------------------------------------------------------------------------- item 8: fsync, stale temporaries


def test_atomic_write_fsyncs_each_file_and_the_folder(tmp_path: Path, fsync_calls: list[str]) -> None:
    from model.files import atomic_write

    synced = fsync_calls
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    atomic_write((a, lambda t: t.write_text("A")), (b, lambda t: t.write_text("B")))
    assert a.read_text() == "A" and b.read_text() == "B"
    temps = [s for s in synced if ".tmp-" in s]
    assert len(temps) == 2, synced  # each temporary file, before its rename
    assert str(tmp_path) in synced  # the folder, after the renames
    assert synced.index(str(tmp_path)) > max(synced.index(t) for t in temps)


def test_file_store_removes_its_stale_temporaries_at_start(extras_bundle: Path, tmp_path: Path) -> None:
    from model.bundle.format import load_bundle

    state = tmp_path / "state"
    state.mkdir()
    name = f"entities-{load_bundle(extras_bundle).fingerprint[:16]}.jsonl"
    stale = state / f".{name}.tmp-999999"
    stale.write_text('{"id": "half')
    other = state / "notes.txt"  # not the store's: kept
    other.write_text("x")
    with TestClient(create_app(_settings(extras_bundle, state))) as c:
        wait_ready(c)
    assert not stale.exists() and other.exists()
