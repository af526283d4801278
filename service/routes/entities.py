"""Entities and relations: GET /entities (search by name or id), GET /relations, and
POST /entities (a new entity from its name, description and numbers, without retraining;
safe to retry with the same id; at most IMF_MAX_NEW_ENTITIES, then 409; 501 when the entity
store cannot keep what it acknowledges)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Query, Response

from service.deps import PredictorDep, StateDep
from service.engine import Predictor
from service.entities import DuplicateId, EntityStore
from service.errors import Forbidden, InvalidRequest, StoreUnavailable, Unsupported
from service.routes.common import ERRORS
from service.schemas import EntitiesResponse, ErrorResponse, NewEntityRequest, NewEntityResponse
from service.state import AppState

log = logging.getLogger(__name__)

router = APIRouter()


@router.get("/relations", summary="Every relation: id and name")
async def relations(p: PredictorDep) -> dict:
    return {"relations": [p.names.relation_info(r) for r in range(p.num_relations)]}


@router.get("/entities", response_model=EntitiesResponse, responses=ERRORS, summary="Find entities by name (or id) substring")
async def entities(state: StateDep, p: PredictorDep, q: Annotated[str, Query(min_length=1, max_length=200)], limit: Annotated[int, Query(ge=1, le=100)] = 10) -> dict:
    return {"entities": await state.run(p.names.search_entities, q, limit)}


@asynccontextmanager
async def store_errors(what: str) -> AsyncIterator[None]:
    """Entity-store failures (a full disk, Redis down or slow, the file store's lock held too
    long) become 503 with nothing added; the server log keeps the cause. The store's own
    ServiceErrors (full: 409, not durable: 501) pass through."""
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


def added_entity(p: Predictor, key: str) -> dict:
    """The response body for the added entity `key`."""
    e = p.names.resolve_entity(key, field="id")
    return {**p.names.entity_info(e), "description": p.names.entity_description(e), "added": len(p.added.ids)}


async def replayed(state: AppState, store: EntityStore, p: Predictor, body: NewEntityRequest) -> dict | None:
    """The entity if body.id is stored already: a retry of the request that stored it (its
    record, served here if the sync has not done so yet), or a different entity under that id
    (422). None when the id is not in the store."""
    async with store_errors("read"):
        stored = next((r for r in await store.load() if r.get("id") == body.id and r.get("model") == p.bundle.fingerprint), None)
    if stored is None:
        return None
    if not p.added.same_entity(stored, body.name, body.description, body.numeric):
        raise InvalidRequest(f"entity id {body.id!r} already exists with a different name, description or numeric attributes", field="id")
    await state.run(p.added.add_records, [stored])
    return added_entity(p, stored["id"])


@router.post(
    "/entities", response_model=NewEntityResponse, status_code=201,
    responses={**ERRORS, 200: {"model": NewEntityResponse, "description": "this id was already added with the same name, description and numbers (a retried request): that entity, nothing new stored"},
               403: {"model": ErrorResponse}, 409: {"model": ErrorResponse, "description": "IMF_MAX_NEW_ENTITIES entities were added already: nothing added"},
               501: {"model": ErrorResponse}},
    summary="Add an entity from its name, description and numbers (no retraining); usable at once as a query and an answer",
)
async def add_entity(body: NewEntityRequest, state: StateDep, p: PredictorDep, response: Response) -> dict:
    if not state.settings.allow_new_entities or state.store is None:
        raise Forbidden("adding entities is disabled on this server (set IMF_ALLOW_NEW_ENTITIES=true)")
    store = state.store
    p.added.check_new_entity(body.name, body.description, body.numeric, body.id, max_text=state.settings.max_entity_text)
    if body.id is not None and p.names.is_known_id(body.id) and (again := await replayed(state, store, p, body)) is not None:
        response.status_code = 200
        return again
    async with store_errors("written"):
        await store.ensure_writable()  # full (409) or not durable (501): say so before the slow encoding
    try:
        record = await state.run(p.added.encode_new_entity, body.name, body.description, body.numeric, body.id)
    except ImportError as exc:
        log.error("text encoder unavailable: %s", exc)
        raise Unsupported("the offline text encoder is not installed on this server (pip install '.[encoder]')") from None
    try:
        async with store_errors("written"):
            await store.add(record)
    except DuplicateId:
        # Stored already, by an earlier try of this request (timed out after the write) or by
        # another request at the same moment.
        if (again := await replayed(state, store, p, body)) is not None:
            response.status_code = 200
            return again
        raise InvalidRequest(f"entity id {record['id']!r} already exists", field="id") from None
    # Stored: serve it here at once; the other replicas pick it up from the store.
    await state.run(p.added.add_records, [record])
    return added_entity(p, record["id"])
