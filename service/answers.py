"""Cache orchestration for predictions: hits served as stored, misses computed together (one
batch through the engine), identical concurrent misses computed once (single flight), and the
new answers written to the cache after the response (a slow cache never delays an answer)."""

from __future__ import annotations

import json
import logging

from service.engine import Predictor
from service.query import Query
from service.state import AppState

log = logging.getLogger(__name__)


def answer(p: Predictor, q: Query, ranked: list) -> dict:
    """The cacheable part of a /predict answer: the query echoed, the ranked predictions with
    names and calibrated probabilities."""
    probs = p.probabilities(q, [r.score for r in ranked])
    return {
        "query": p.names.describe(q),
        "predictions": [{**p.names.entity_info(r.entity), "score": r.score, "rank": r.rank, "known": r.known, "probability": pr} for r, pr in zip(ranked, probs)],
    }


async def cached_predictions(state: AppState, p: Predictor, queries: list[Query]) -> list[tuple[dict, bool]]:
    """(answer, served from cache) for each resolved query, in order."""
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
            answers = [answer(p, queries[i], r) for i, r in zip(missing, ranked)]
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
