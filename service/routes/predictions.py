"""POST /predict and POST /predict/batch: ranked answers, through the cache."""

from __future__ import annotations

from fastapi import APIRouter

from service.answers import cached_predictions
from service.deps import PredictorDep, StateDep
from service.errors import ServiceError
from service.query import Query
from service.routes.common import NAME_ERRORS
from service.schemas import BatchRequest, BatchResponse, PredictRequest, PredictResponse

router = APIRouter()


@router.post("/predict", response_model=PredictResponse, responses=NAME_ERRORS, summary="Top-k tails (or heads) for one query")
async def predict(body: PredictRequest, state: StateDep, p: PredictorDep) -> dict:
    q = await state.run(lambda: p.names.resolve(body.head, body.relation, direction=body.direction, k=body.k, filter_known=body.filter_known, max_k=state.settings.max_k))
    (answer, cached), = await cached_predictions(state, p, [q])
    return {"model": p.bundle.fingerprint, "cached": cached, **answer}


@router.post("/predict/batch", response_model=BatchResponse, responses=NAME_ERRORS, summary="Many queries in one request, scored together")
async def predict_batch(body: BatchRequest, state: StateDep, p: PredictorDep) -> dict:
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
    return {"model": p.bundle.fingerprint, "results": [{"model": p.bundle.fingerprint, "cached": c, **a} for a, c in answers]}
