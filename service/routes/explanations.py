"""POST /explain and POST /score: the decision-fusion weights and each branch's share of an
answer, and the calibrated probability of one triple."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import PredictorDep, StateDep
from service.routes.common import NAME_ERRORS
from service.schemas import ExplainRequest, ExplainResponse, ScoreRequest, ScoreResponse

router = APIRouter()


@router.post("/explain", response_model=ExplainResponse, responses=NAME_ERRORS, summary="Decision-fusion weights and per-branch contributions")
async def explain(body: ExplainRequest, state: StateDep, p: PredictorDep) -> dict:
    def work() -> dict:
        q = p.names.resolve(body.head, body.relation, direction=body.direction, k=body.k, filter_known=body.filter_known, max_k=state.settings.max_k)
        tail = p.names.resolve_entity(body.tail, field="tail") if body.tail is not None else None
        weights, explained = p.explain(q, tail)
        probs = p.probabilities(q, [e.score for e in explained])
        return {
            "model": p.bundle.fingerprint,
            "query": p.names.describe(q),
            "weights": weights,
            "predictions": [
                {**p.names.entity_info(e.entity), "score": e.score, "rank": e.rank, "known": e.known, "probability": pr, "branches": e.branches}
                for e, pr in zip(explained, probs)
            ],
        }

    return await state.run(work)


@router.post("/score", response_model=ScoreResponse, responses=NAME_ERRORS, summary="Calibrated probability that one triple holds, with the per-branch breakdown")
async def score(body: ScoreRequest, state: StateDep, p: PredictorDep) -> dict:
    def work() -> dict:
        q = p.names.resolve(body.head, body.relation, direction="tail", k=1, filter_known=False)
        tail = p.names.resolve_entity(body.tail, field="tail")
        weights, (e,) = p.explain(q, tail)
        return {
            "model": p.bundle.fingerprint,
            "head": p.names.entity_info(q.entity),
            "relation": p.names.relation_info(q.relation),
            "tail": p.names.entity_info(tail),
            "score": e.score,
            "probability": p.probabilities(q, [e.score])[0],
            "rank": e.rank,
            "known": e.known,
            "weights": weights,
            "branches": e.branches,
        }

    return await state.run(work)
