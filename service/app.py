"""The FastAPI app: `create_app(settings)` wires HTTP to the engine, the cache and the metrics.

Heavy work happens in the lifespan, never at import: the bundle is loaded in the background so
/health answers at once and /ready (and every prediction) says 503 until the model, its tables
and the FAISS index are ready. Model and FAISS work runs in a thread pool of IMF_WORKERS, with
IMF_TORCH_THREADS / IMF_FAISS_THREADS each, so concurrent requests neither block the event loop
nor oversubscribe the CPU. Every error leaves as a JSON body (see service.errors); never a
stack trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import anyio
import faiss
import torch
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model import __version__
from model.features.text import encode_texts
from service.cache import Cache, MemoryCache, RedisCache, SingleFlight, redacted
from service.engine import Predictor
from service.engine import Query as EngineQuery
from service.entities import DuplicateId, EntityStore, FileStore, RedisStore
from service.errors import Forbidden, InvalidRequest, NotReady, Overloaded, ServiceError, StoreUnavailable, Unauthorized, Unsupported
from service.metrics import Metrics
from service.schemas import (
    BatchRequest,
    BatchResponse,
    EntitiesResponse,
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    NewEntityRequest,
    NewEntityResponse,
    PredictRequest,
    PredictResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.settings import Settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"

Loader = Callable[[Settings], Predictor]


def default_loader(settings: Settings) -> Predictor:
    return Predictor.load(
        settings.bundle,
        candidates=settings.candidates,
        index_kind=settings.index,
        nprobe=settings.nprobe,
        refine_factor=settings.refine_factor,
        save_index=settings.save_index,
    )


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    cache: Cache
    limiter: anyio.CapacityLimiter
    singleflight: SingleFlight = field(default_factory=SingleFlight)
    predictor: Predictor | None = None
    load_error: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    pending: int = 0  # model jobs running or waiting for a worker
    inflight: int = 0  # admitted API requests not yet answered
    background: set[asyncio.Task] = field(default_factory=set)
    store: EntityStore | None = None  # added entities (IMF_ALLOW_NEW_ENTITIES)
    store_version: str | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run model / FAISS work off the event loop, at most IMF_WORKERS at a time.

        A request whose job has not finished within IMF_REQUEST_TIMEOUT_S gets 503 +
        Retry-After (its job is cancelled if it never started; one that is running finishes in
        its thread). With admission (the `Admission` middleware) this bounds both the queue and
        the latency of what is admitted under overload.
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

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` after the response (cache writes), keeping a reference until done."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def get_state(request: Request) -> AppState:
    return request.app.state.imf


StateDep = Annotated[AppState, Depends(get_state)]


def get_predictor(state: StateDep) -> Predictor:
    if state.predictor is None:
        # Terse on purpose: the exception text (paths, internals) goes to the log only.
        raise NotReady("model failed to load; see the server log" if state.load_error else "model is loading")
    return state.predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]


def require_key(request: Request, state: StateDep) -> None:
    """IMF_API_KEY, when set, must come as `X-API-Key: KEY` or `Authorization: Bearer KEY`."""
    expected = state.settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given is None or not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise Unauthorized("missing or wrong API key (send X-API-Key or Authorization: Bearer)")


# ----------------------------------------------------------------------------- errors


def error_body(kind: str, message: str, **extra: Any) -> dict:
    return {"error": {"type": kind, "message": message, **{k: v for k, v in extra.items() if v is not None}}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return JSONResponse(error_body(exc.code, exc.message, field=exc.field, suggestions=exc.suggestions), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(x for x in first["loc"] if x != "body") or "body"
        return JSONResponse(error_body("validation_error", f"{where}: {first['msg']}", details=details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(kind, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug: log it, hide it
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal error; see the server log"), status_code=500)


async def send_json_error(send: Send, status: int, kind: str, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An error response written straight to ASGI (for middleware that answers before the app)."""
    body = json.dumps(error_body(kind, message)).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class Admission:
    """Pure ASGI middleware: admission control before any parsing, once per request.

    With IMF_MAX_PENDING API requests in progress, a new one is answered 503 (JSON, with
    Retry-After) at once, without reading its body: refusing must cost next to nothing, or an
    overload spends the CPU on refusals. An admitted request keeps its slot until its response
    is sent, so it is never refused halfway. Health, readiness, metrics and docs are not counted.
    """

    EXEMPT = ("/health", "/ready", "/metrics", "/docs", "/openapi.json", "/redoc")

    def __init__(self, app: ASGIApp, get_state: Callable[[], AppState | None]) -> None:
        self.app = app
        self.get_state = get_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.get_state() if scope["type"] == "http" else None
        if state is None or scope["path"].startswith(self.EXEMPT):
            await self.app(scope, receive, send)
            return
        if state.inflight >= state.settings.max_pending:
            state.metrics.shed.labels("queue_full").inc()
            await send_json_error(send, 503, "overloaded", f"server busy: {state.inflight} requests in progress; retry shortly", [(b"retry-after", b"1")])
            return
        state.inflight += 1
        state.metrics.inflight.set(state.inflight)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.inflight -= 1
                state.metrics.inflight.set(state.inflight)

        async def send_then_release(message: Message) -> None:
            # Free the slot before the last byte goes out: a client that sends its next request
            # the moment it has this answer must find the slot free.
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_then_release)
        finally:
            release()


class BodyLimit:
    """Pure ASGI middleware: 413 (JSON) for bodies over the limit, declared or streamed.

    The body is read here first (it is small by definition) and replayed to the app, so an
    oversized chunked upload is refused before any parsing starts.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        await send_json_error(send, 413, "payload_too_large", f"request body over {self.max_bytes} bytes")


# ----------------------------------------------------------------------------- endpoints


def _answer(p: Predictor, q: EngineQuery, ranked: list) -> dict:
    """The cacheable part of a /predict answer."""
    probs = p.probabilities(q, [r.score for r in ranked])
    return {
        "query": p.describe(q),
        "predictions": [{**p.entity_info(r.entity), "score": r.score, "rank": r.rank, "known": r.known, "probability": pr} for r, pr in zip(ranked, probs)],
    }


async def sync_entities(state: AppState, p: Predictor) -> None:
    """Serve what the entity store holds now, if it changed since the last look."""
    assert state.store is not None
    version = await state.store.version()
    if version == state.store_version:
        return
    records = await state.store.load()
    await state.run(p.add_records, records)
    state.store_version = version


async def _cached_predictions(state: AppState, p: Predictor, queries: list[EngineQuery]) -> list[tuple[dict, bool]]:
    """Answers for resolved queries: cache hits as they are, misses computed together (one
    batch through the engine), identical concurrent misses computed once, then cached."""
    keys = [q.cache_key(p.bundle.fingerprint, p.retrieval) for q in queries]
    hits = await state.cache.get_many(keys)  # one round trip (MGET) for a batch
    results: list[tuple[dict, bool] | None] = [None] * len(queries)
    missing = []
    for i, raw in enumerate(hits):
        if raw is not None:
            try:
                results[i] = (json.loads(raw), True)
                state.metrics.cache_hits.inc()
                continue
            except (ValueError, UnicodeDecodeError):
                log.warning("ignoring a corrupt cache entry %s", keys[i])
        missing.append(i)
    if missing:
        state.metrics.cache_misses.inc(len(missing))

        async def compute() -> list[dict]:
            ranked = await state.run(p.predict_many, [queries[i] for i in missing])
            answers = [_answer(p, queries[i], r) for i, r in zip(missing, ranked)]
            # Written after the response, off its path: a slow cache never delays an answer.
            state.spawn(state.cache.set_many([(keys[i], json.dumps(a).encode()) for i, a in zip(missing, answers)], state.settings.cache_ttl_s))
            return answers

        flight_key = "|".join(keys[i] for i in missing)
        answers, shared = await state.singleflight.run(flight_key, compute)
        if shared:
            state.metrics.shared.inc(len(missing))
        for i, a in zip(missing, answers):
            results[i] = (a, False)
    return [r for r in results if r is not None]


@asynccontextmanager
async def _store_errors(what: str) -> AsyncIterator[None]:
    """Entity-store failures (a full disk, Redis down or slow) become 503 with nothing added;
    the server log keeps the cause."""
    try:
        yield
    except (OSError, ConnectionError, TimeoutError) as exc:  # redis errors subclass ConnectionError / TimeoutError
        log.error("entity store: %s", exc)
        raise StoreUnavailable(f"the entity store cannot be {what} now; nothing was added") from None
    except Exception as exc:
        if type(exc).__module__.startswith("redis"):
            log.error("entity store: %s", exc)
            raise StoreUnavailable(f"the entity store cannot be {what} now; nothing was added") from None
        raise


def build_router() -> APIRouter:
    api = APIRouter()
    responses = {401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}

    @api.post("/predict", response_model=PredictResponse, responses=responses, summary="Top-k tails (or heads) for one query")
    async def predict(body: PredictRequest, state: StateDep, p: PredictorDep) -> dict:
        q = await state.run(lambda: p.resolve(body.head, body.relation, direction=body.direction, k=body.k, filter_known=body.filter_known, max_k=state.settings.max_k))
        (answer, cached), = await _cached_predictions(state, p, [q])
        return {"model": p.bundle.fingerprint, "cached": cached, **answer}

    @api.post("/predict/batch", response_model=BatchResponse, responses=responses, summary="Many queries in one request, scored together")
    async def predict_batch(body: BatchRequest, state: StateDep, p: PredictorDep) -> dict:
        if len(body.queries) > state.settings.max_batch:
            raise InvalidRequest(f"at most {state.settings.max_batch} queries per batch, got {len(body.queries)}", field="queries")

        def resolve_all() -> list[EngineQuery]:
            out = []
            for i, b in enumerate(body.queries):
                try:
                    out.append(p.resolve(b.head, b.relation, direction=b.direction, k=b.k, filter_known=b.filter_known, max_k=state.settings.max_k))
                except ServiceError as exc:
                    exc.field = f"queries[{i}].{exc.field}" if exc.field else f"queries[{i}]"
                    exc.message = f"queries[{i}]: {exc.message}"
                    raise
            return out

        queries = await state.run(resolve_all)
        answers = await _cached_predictions(state, p, queries)
        return {"model": p.bundle.fingerprint, "results": [{"model": p.bundle.fingerprint, "cached": c, **a} for a, c in answers]}

    @api.post("/explain", response_model=ExplainResponse, responses=responses, summary="Decision-fusion weights and per-branch contributions")
    async def explain(body: ExplainRequest, state: StateDep, p: PredictorDep) -> dict:
        def work() -> dict:
            q = p.resolve(body.head, body.relation, direction=body.direction, k=body.k, filter_known=body.filter_known, max_k=state.settings.max_k)
            tail = p.resolve_entity(body.tail, field="tail") if body.tail is not None else None
            weights, explained = p.explain(q, tail)
            probs = p.probabilities(q, [e.score for e in explained])
            return {
                "model": p.bundle.fingerprint,
                "query": p.describe(q),
                "weights": weights,
                "predictions": [
                    {**p.entity_info(e.entity), "score": e.score, "rank": e.rank, "known": e.known, "probability": pr, "branches": e.branches}
                    for e, pr in zip(explained, probs)
                ],
            }

        return await state.run(work)

    @api.post("/score", response_model=ScoreResponse, responses=responses, summary="Calibrated probability that one triple holds, with the per-branch breakdown")
    async def score(body: ScoreRequest, state: StateDep, p: PredictorDep) -> dict:
        def work() -> dict:
            q = p.resolve(body.head, body.relation, direction="tail", k=1, filter_known=False)
            tail = p.resolve_entity(body.tail, field="tail")
            weights, (e,) = p.explain(q, tail)
            return {
                "model": p.bundle.fingerprint,
                "head": p.entity_info(q.entity),
                "relation": p.relation_info(q.relation),
                "tail": p.entity_info(tail),
                "score": e.score,
                "probability": p.probabilities(q, [e.score])[0],
                "rank": e.rank,
                "known": e.known,
                "weights": weights,
                "branches": e.branches,
            }

        return await state.run(work)

    @api.post("/entities", response_model=NewEntityResponse, status_code=201,
              responses={**responses, 200: {"model": NewEntityResponse, "description": "this id was already added with the same name, description and numbers (a retried request): that entity, nothing new stored"},
                         403: {"model": ErrorResponse}, 501: {"model": ErrorResponse}},
              summary="Add an entity from its name, description and numbers (no retraining); usable at once as a query and an answer")
    async def add_entity(body: NewEntityRequest, state: StateDep, p: PredictorDep, response: Response) -> dict:
        if not state.settings.allow_new_entities or state.store is None:
            raise Forbidden("adding entities is disabled on this server (set IMF_ALLOW_NEW_ENTITIES=true)")
        store = state.store
        p.check_new_entity(body.name, body.description, body.numeric, body.id, max_text=state.settings.max_entity_text)

        async def replayed() -> dict | None:
            """The entity if body.id is stored already: a retry of the request that stored it
            (answered 200 with it, and served here if the sync has not done so yet), or a
            different entity under that id (422)."""
            async with _store_errors("read"):
                stored = next((r for r in await store.load() if r.get("id") == body.id and r.get("model") == p.bundle.fingerprint), None)
            if stored is None:
                return None
            if not p.same_entity(stored, body.name, body.description, body.numeric):
                raise InvalidRequest(f"entity id {body.id!r} already exists with a different name, description or numeric attributes", field="id")
            await state.run(p.add_records, [stored])
            response.status_code = 200
            return added(stored["id"])

        def added(key: str) -> dict:
            e = p.resolve_entity(key, field="id")
            return {**p.entity_info(e), "description": p.entity_description(e), "added": len(p.view.added_ids)}

        if body.id is not None and p.is_known_id(body.id) and (again := await replayed()) is not None:
            return again
        try:
            record = await state.run(p.encode_new_entity, body.name, body.description, body.numeric, body.id)
        except ImportError as exc:
            log.error("text encoder unavailable: %s", exc)
            raise Unsupported("the offline text encoder is not installed on this server (pip install '.[features]')") from None
        try:
            async with _store_errors("written"):
                await store.add(record)
        except DuplicateId:
            # Stored already, by an earlier try of this request (timed out after the write) or by
            # another request at the same moment.
            if (again := await replayed()) is not None:
                return again
            raise InvalidRequest(f"entity id {record['id']!r} already exists", field="id") from None
        # Stored: serve it here at once; the other replicas pick it up from the store.
        await state.run(p.add_records, [record])
        return added(record["id"])

    @api.get("/relations", summary="Every relation: id and name")
    async def relations(p: PredictorDep) -> dict:
        return {"relations": [p.relation_info(r) for r in range(p.num_relations)]}

    @api.get("/entities", response_model=EntitiesResponse, responses=responses, summary="Find entities by name (or id) substring")
    async def entities(state: StateDep, p: PredictorDep, q: Annotated[str, Query(min_length=1, max_length=200)], limit: Annotated[int, Query(ge=1, le=100)] = 10) -> dict:
        return {"entities": await state.run(p.search_entities, q, limit)}

    @api.get("/info", summary="The served model: fingerprint, dataset, branches, metrics")
    async def info(state: StateDep, p: PredictorDep) -> dict:
        m = p.bundle.manifest
        return {
            "model": p.bundle.fingerprint,
            "dataset": m.get("dataset"),
            "branches": m.get("branches"),
            "modalities": m.get("modalities"),
            "metrics": m.get("metrics"),
            "index": {"kind": p.index_kind, "candidates": p.candidates if p.index is not None else p.num_entities},
            "calibration": (m.get("extras") or {}).get("calibration", {}).get("method"),
            "new_entities": {
                "enabled": bool(state.settings.allow_new_entities and p.bundle.feature_map is not None),
                "added": len(p.view.added_ids),
                "numeric_attributes": p.bundle.feature_map.numeric_attributes if p.bundle.feature_map else [],
            },
            "version": __version__,
        }

    return api


def build_ops_router() -> APIRouter:
    ops = APIRouter()

    @ops.get("/health", summary="Liveness: the process answers")
    async def health() -> dict:
        return {"status": "ok"}

    @ops.get("/ready", summary="Readiness: model, index and cache status (503 until loaded)")
    async def ready(state: StateDep) -> JSONResponse:
        cache = await state.cache.status()
        state.metrics.cache_up.set(1 if cache.get("ok") else 0)
        # Open to anyone, so terse: no paths, no exception text (the server log has them).
        body = {
            "ready": state.predictor is not None,
            "model": state.predictor.bundle.fingerprint if state.predictor else None,
            "cache": {k: v for k, v in cache.items() if k in ("backend", "ok", "circuit")},
        }
        if state.predictor is None:
            body["error"] = "model failed to load; see the server log" if state.load_error else "model is loading"
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse(body)

    return ops


def create_app(settings: Settings | None = None, *, loader: Loader = default_loader) -> FastAPI:
    """The app for `settings` (default: from IMF_* variables). `loader` builds the Predictor
    (tests pass a small one); it runs in the lifespan, off the event loop."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(settings.torch_threads)
        faiss.omp_set_num_threads(settings.faiss_threads)
        if settings.redis_url:
            cache: Cache = RedisCache(settings.redis_url, timeout_s=settings.redis_timeout_s, on_error=metrics.cache_errors.inc)
            log.info("cache: redis at %s", redacted(settings.redis_url))
        else:
            cache = MemoryCache(settings.cache_size, settings.cache_bytes)
            log.info("cache: in-process LRU (%d entries, %d MiB); set IMF_REDIS_URL for Redis", settings.cache_size, settings.cache_bytes >> 20)
        state = AppState(settings=settings, metrics=metrics, cache=cache, limiter=anyio.CapacityLimiter(settings.workers))
        app.state.imf = state

        async def load() -> None:
            try:
                predictor = await anyio.to_thread.run_sync(loader, settings)
                if settings.allow_new_entities:
                    if predictor.bundle.feature_map is None:
                        log.warning("IMF_ALLOW_NEW_ENTITIES is set but %s has no feature map (imf bundle extras): POST /entities answers 501", settings.bundle)
                    if settings.redis_url:
                        state.store = RedisStore(settings.redis_url, predictor.bundle.fingerprint, settings.redis_timeout_s)
                    else:
                        state.store = FileStore(settings.state_dir, predictor.bundle.fingerprint)
                    try:
                        await sync_entities(state, predictor)
                    except Exception as exc:  # Redis down at start: serve the bundle, retry in the sync loop
                        log.error("added entities not loaded yet (%s); retrying every %gs", exc, settings.entity_sync_s)
                    state.spawn(entity_sync_loop(predictor))
                    if predictor.bundle.feature_map is not None:
                        try:  # load the text encoder now, not inside the first POST's time limit
                            await anyio.to_thread.run_sync(encode_texts, ["warm-up"])
                            torch.set_num_threads(settings.torch_threads)  # the encoder set its own
                        except ImportError as exc:
                            log.warning("text encoder not installed (%s): POST /entities answers 501", exc)
                        except Exception as exc:  # noqa: BLE001 - serving the bundle matters more
                            log.warning("text encoder failed to load (%s: %s): POST /entities will try again", type(exc).__name__, exc)
                state.predictor = predictor
                metrics.ready.set(1)
                metrics.startup.set(time.monotonic() - state.started_at)
            except Exception as exc:  # keep serving /health and /ready, which report it
                state.load_error = f"{type(exc).__name__}: {exc}"
                log.error("loading %s failed: %s", settings.bundle, state.load_error)

        async def entity_sync_loop(predictor: Predictor) -> None:
            while True:
                await asyncio.sleep(settings.entity_sync_s)
                try:
                    await sync_entities(state, predictor)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("entity sync: %s", exc)

        task = asyncio.create_task(load())
        try:
            yield
        finally:
            if not task.done():
                task.cancel()
            for t in list(state.background):
                if t.get_coro().__name__ == "entity_sync_loop":  # type: ignore[union-attr]
                    t.cancel()
            if state.store is not None:
                await state.store.close()
            if state.background:  # cache writes still in flight: give them a moment
                await asyncio.wait(list(state.background), timeout=2)
            await cache.close()

    app = FastAPI(
        title="IMF link prediction",
        version=__version__,
        description="Multimodal knowledge-graph link prediction with IMF: FAISS retrieval, exact decision-fusion rescoring, explanations, cache.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(build_ops_router())
    app.include_router(build_router(), dependencies=[Depends(require_key)])

    @app.get("/", include_in_schema=False)
    async def explorer() -> FileResponse:
        """The explorer page (service/static/explorer.html): no build step, nothing from a CDN."""
        return FileResponse(STATIC / "explorer.html", media_type="text/html")

    @app.get("/metrics", include_in_schema=True, summary="Prometheus metrics", dependencies=[Depends(require_key)])
    async def metrics_endpoint(state: StateDep) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # before parsing
    app.add_middleware(Admission, get_state=lambda: getattr(app.state, "imf", None))  # outermost: before reading the body
    return app
