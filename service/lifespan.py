"""Start-up and shut-down of the app, each step a named function.

Heavy work happens here, never at import: `lifespan` makes the cache and the state at once (so
/health answers), then loads the engine in the background (`load`), so /ready and every
prediction answer 503 until the model, its tables and the FAISS index are ready. With
IMF_ALLOW_NEW_ENTITIES it opens the entity store (checking that a Redis store keeps what it
acknowledges: one that may evict or does not persist refuses additions, see `open_entities`),
serves what it holds, keeps it in sync (`entity_sync_loop`) and loads the text encoder before
the first request needs it; /ready waits for all of it (its "error" says which step is under
way), and "ready" is logged when /ready starts to answer 200.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial

import anyio
import faiss
import torch
from fastapi import FastAPI

from model.features.text import encode_texts
from service.answers import encoded_answers
from service.batcher import Batcher
from service.cache import Cache, MemoryCache, RedisCache, redacted
from service.engine import Predictor
from service.entities import EntityStore, FileStore, RedisStore
from service.metrics import Metrics
from service.settings import Settings
from service.query import Query
from service.state import AppState

log = logging.getLogger(__name__)

Loader = Callable[[Settings], Predictor]


def default_loader(settings: Settings) -> Predictor:
    """The engine for IMF_BUNDLE with the retrieval settings."""
    return Predictor.load(
        settings.bundle,
        candidates=settings.candidates,
        index_kind=settings.index,
        nprobe=settings.nprobe,
        refine_factor=settings.refine_factor,
        save_index=settings.save_index,
        table_dtype=settings.table_dtype,
    )


def make_cache(settings: Settings, metrics: Metrics) -> Cache:
    """Redis when IMF_REDIS_URL is set, else the in-process LRU."""
    if settings.redis_url:
        log.info("cache: redis at %s", redacted(settings.redis_url))
        return RedisCache(settings.redis_url, timeout_s=settings.redis_timeout_s, on_error=metrics.cache_errors.inc)
    log.info("cache: in-process LRU (%d entries, %d MiB); set IMF_REDIS_URL for Redis", settings.cache_size, settings.cache_bytes >> 20)
    return MemoryCache(settings.cache_size, settings.cache_bytes)


def make_batcher(state: AppState, predictor: Predictor) -> Batcher[Query, bytes]:
    """The batcher of cache misses (service.batcher): IMF_BATCH_SIZE queries per pass at most,
    on the app's IMF_WORKERS worker threads."""
    settings = state.settings
    return Batcher(
        partial(encoded_answers, predictor),
        limiter=state.limiter,
        workers=settings.workers,
        max_batch=settings.batch_size,
        max_wait_s=settings.batch_wait_ms / 1000,
        on_batch=state.metrics.batch_size.observe,
    )


def make_store(settings: Settings, predictor: Predictor) -> EntityStore:
    """Where added entities live: the durable Redis of IMF_STORE_REDIS_URL, else the Redis of
    IMF_REDIS_URL (which must then be configured to persist and never evict: checked by
    `RedisStore.open`), both shared by the replicas; else a file in IMF_STATE_DIR."""
    fingerprint, cap = predictor.bundle.fingerprint, settings.max_new_entities
    url = settings.store_redis_url or settings.redis_url
    if url:
        log.info("entity store: redis at %s%s", redacted(url), "" if settings.store_redis_url else " (the cache's: IMF_STORE_REDIS_URL unset)")
        return RedisStore(url, fingerprint, settings.redis_timeout_s, max_entities=cap)
    log.info("entity store: %s", settings.state_dir)
    # The lock is waited for at most as long as a request waits for its model job.
    return FileStore(settings.state_dir, fingerprint, max_entities=cap, lock_timeout_s=settings.request_timeout_s)


async def sync_entities(state: AppState, p: Predictor) -> None:
    """Serve what the entity store holds now, if it changed since the last look."""
    assert state.store is not None
    version = await state.store.version()
    if version == state.store_version:
        return
    records = await state.store.load()
    await state.run(p.added.add_records, records)
    state.store_version = version


async def entity_sync_loop(state: AppState, p: Predictor) -> None:
    """Pick up entities other replicas added, every IMF_ENTITY_SYNC_S, until cancelled."""
    while True:
        await asyncio.sleep(state.settings.entity_sync_s)
        try:
            await sync_entities(state, p)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("entity sync: %s", exc)


# pyproject.toml's `encoder` extra, as a user installs it (scripts/setup.sh takes extras too)
ENCODER_EXTRA = "pip install 'imf-serve[encoder]' (from a checkout: bash scripts/setup.sh encoder)"


async def warm_encoder(state: AppState) -> None:
    """Load the text encoder now, not inside the first POST /entities' time limit; /ready
    answers 503 ("text encoder is loading") meanwhile, since the replica cannot yet do all it
    offers. Not installed: one line saying which extra to install, and new entities are off
    (GET /info says so); failing otherwise: a warning, and POST /entities tries again."""
    state.loading = "text encoder is loading"
    log.info("loading the text encoder for new entities (POST /entities); /ready answers 503 until it is loaded")
    t0 = time.monotonic()
    try:
        await anyio.to_thread.run_sync(encode_texts, ["warm-up"])
        torch.set_num_threads(state.settings.torch_threads)  # the encoder set its own
        log.info("text encoder loaded in %.1f s", time.monotonic() - t0)
    except ImportError as exc:  # the extra is missing: a fact of this install, not a bug (no traceback)
        state.encoder_missing = True
        log.warning("text encoder not installed (%s): new entities are disabled, POST /entities answers 501; to enable them: %s", exc, ENCODER_EXTRA)
    except Exception as exc:  # noqa: BLE001 - serving the bundle matters more
        log.warning("text encoder failed to load after %.1f s (%s: %s): POST /entities will try again", time.monotonic() - t0, type(exc).__name__, exc)


async def open_entities(state: AppState, p: Predictor, tasks: list[asyncio.Task]) -> None:
    """The entity store, what it holds served, and its sync loop (added to `tasks`, which
    shut-down cancels).

    A Redis store that may evict (an allkeys-* policy) or does not persist (appendonly no) is
    not refused at start: the replica serves the bundle and what the store holds, and POST
    /entities answers 501 with the fix (the error is logged here too). Refusing to start
    would take predictions down for a problem of one optional endpoint; accepting additions
    would acknowledge entities that a restart or a full memory silently deletes."""
    settings = state.settings
    state.loading = "entity store is opening"
    if p.bundle.feature_map is None:
        log.warning("IMF_ALLOW_NEW_ENTITIES is set but %s has no feature map (imf bundle extras): POST /entities answers 501", settings.bundle)
    state.store = make_store(settings, p)
    try:
        await state.store.open()
        await sync_entities(state, p)
    except Exception as exc:  # Redis down at start: serve the bundle, retry in the sync loop (the check: on the first POST)
        log.error("added entities not loaded yet (%s); retrying every %gs", exc, settings.entity_sync_s)
    tasks.append(state.spawn(entity_sync_loop(state, p)))
    if p.bundle.feature_map is not None:
        await warm_encoder(state)


def new_entities_note(state: AppState, p: Predictor) -> str:
    """What the "ready" line says of new entities (nothing when they were not asked for)."""
    if not state.settings.allow_new_entities:
        return ""
    if p.bundle.feature_map is None:
        return "; new entities off (no feature map)"
    return "; new entities off (no text encoder)" if state.encoder_missing else "; new entities on"


async def load(state: AppState, loader: Loader, tasks: list[asyncio.Task]) -> None:
    """Load the engine off the event loop (with IMF_ALLOW_NEW_ENTITIES also the entity store and
    the text encoder: `open_entities`) and mark the app ready, logging "ready" at the moment
    /ready starts to answer 200; a failure is kept for /ready (which reports it tersely) and the
    log, and the process keeps answering."""
    settings = state.settings
    try:
        state.loading = "model is loading"
        predictor = await anyio.to_thread.run_sync(loader, settings)
        if settings.allow_new_entities:
            await open_entities(state, predictor, tasks)
        state.batcher = make_batcher(state, predictor)
        state.predictor = predictor  # from here /ready answers 200
        seconds = time.monotonic() - state.started_at
        state.metrics.ready.set(1)
        state.metrics.startup.set(seconds)
        log.info("ready in %.1f s: model %s, %d entities%s", seconds, predictor.bundle.fingerprint[:12], predictor.num_entities, new_entities_note(state, predictor))
    except Exception as exc:  # keep serving /health and /ready, which report it
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("loading %s failed: %s", settings.bundle, state.load_error)


async def shut_down(state: AppState, tasks: list[asyncio.Task]) -> None:
    """Stop loading and syncing, close the store, give cache writes a moment, close the cache."""
    for t in tasks:
        if not t.done():
            t.cancel()
    if state.store is not None:
        await state.store.close()
    pending = [t for t in state.background if not t.done()]
    if pending:  # cache writes still in flight: give them a moment
        await asyncio.wait(pending, timeout=2)
    await state.cache.close()


def lifespan(settings: Settings, metrics: Metrics, loader: Loader) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan for these settings: state at once, the engine in the background."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        faiss.omp_set_num_threads(settings.faiss_threads)
        state = AppState(settings=settings, metrics=metrics, cache=make_cache(settings, metrics), limiter=anyio.CapacityLimiter(settings.workers))
        app.state.imf = state
        tasks: list[asyncio.Task] = []
        tasks.append(asyncio.create_task(load(state, loader, tasks)))
        try:
            yield
        finally:
            await shut_down(state, tasks)

    return run
