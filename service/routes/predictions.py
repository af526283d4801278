"""POST /predict and POST /predict/batch: ranked answers, through the cache.

The response is assembled from the answers' stored bytes (service.answers): its schema is the
documented PredictResponse / BatchResponse, which tests/test_api.py checks each response
against, but it is not validated again on the way out.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.answers import cached_predictions, encode, response_bytes
from service.deps import PredictorDep, StateDep
from service.errors import ServiceError
from service.query import Query
from service.routes.common import NAME_ERRORS
from service.schemas import BatchRequest, BatchResponse, PredictRequest, PredictResponse

router = APIRouter()


def json_bytes(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


@router.post("/predict", response_model=PredictResponse, responses=NAME_ERRORS, summary="Top-k tails (or heads) for one query")
async def predict(body: PredictRequest, state: StateDep, p: PredictorDep) -> Response:
    args = {"direction": body.direction, "k": body.k, "filter_known": body.filter_known, "max_k": state.settings.max_k}
    # Ids and exact names resolve on the event loop (dictionary lookups); anything else goes to
    # a worker, whose error looks for close names.
    q = p.names.try_resolve(body.head, body.relation, **args) or await state.run(lambda: p.names.resolve(body.head, body.relation, **args))
    (raw, cached), = await cached_predictions(state, p, [q])
    return json_bytes(response_bytes(p.bundle.fingerprint, raw, cached))


@router.post("/predict/batch", response_model=BatchResponse, responses=NAME_ERRORS, summary="Many queries in one request, scored together")
async def predict_batch(body: BatchRequest, state: StateDep, p: PredictorDep) -> Response:
    # At most IMF_MAX_BATCH queries: the schema counts them before validating any
    # (service.schemas.BatchRequest), so a longer batch never gets here.
    def resolve_all() -> list[Query]:
        out = []
        for i, b in enumerate(body.queries):
            try:
                out.append(p.names.resolve(b.head, b.relation, direction=b.direction, k=b.k, filter_known=b.filter_known, max_k=state.settings.max_k))
            except ServiceError as exc:
                exc.field = f"queries[{i}].{exc.field}" if exc.field else f"queries[{i}]"
                exc.message = f"queries[{i}]: {exc.message}"
                raise
        return out

    queries = await state.run(resolve_all)
    answers = await cached_predictions(state, p, queries)
    fingerprint = p.bundle.fingerprint
    results = b",".join(response_bytes(fingerprint, raw, cached) for raw, cached in answers)
    return json_bytes(b'{"model":' + encode(fingerprint) + b',"results":[' + results + b"]}")
