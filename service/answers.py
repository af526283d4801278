"""Cache orchestration for predictions: hits served as stored, misses scored together (the
batcher: one pass for the misses of concurrent requests), identical concurrent misses computed
once (single flight), and the new answers written to the cache after the response (a slow cache
never delays an answer).

An answer travels as the bytes of its JSON object: computed and encoded once in a worker
thread, stored as such, and spliced into the response as such. A cache hit is never parsed,
validated or encoded again (the service wrote those bytes itself; `looks_like_answer` only
refuses what it cannot have written).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from service.engine import Predictor
from service.query import Query
from service.state import AppState

log = logging.getLogger(__name__)

ANSWER_PREFIX = b'{"query":'  # every answer's bytes start so (`answer` puts "query" first)


def encode(obj: Any) -> bytes:
    """Compact JSON, as FastAPI's JSONResponse writes it."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def answer(p: Predictor, q: Query, ranked: list) -> dict:
    """The cacheable part of a /predict answer: the query echoed, the ranked predictions with
    names and calibrated probabilities."""
    probs = p.probabilities(q, [r.score for r in ranked])
    return {
        "query": p.names.describe(q),
        "predictions": [{**p.names.entity_info(r.entity), "score": r.score, "rank": r.rank, "known": r.known, "probability": pr} for r, pr in zip(ranked, probs)],
    }


def encoded_answers(p: Predictor, queries: list[Query]) -> list[bytes]:
    """The answers of a batch of queries scored together, encoded (in a worker thread)."""
    return [encode(answer(p, q, r)) for q, r in zip(queries, p.predict_many(queries))]


def looks_like_answer(raw: bytes) -> bool:
    """A cache entry this service wrote: a JSON object that starts with its query."""
    return raw.startswith(ANSWER_PREFIX) and raw.endswith(b"}")


def response_bytes(fingerprint: str, raw: bytes, cached: bool) -> bytes:
    """The /predict response `{"model", "cached", "query", "predictions"}` from an answer's
    bytes, without decoding them."""
    return b'{"model":' + encode(fingerprint) + (b',"cached":true,' if cached else b',"cached":false,') + raw[1:]


async def cached_predictions(state: AppState, p: Predictor, queries: list[Query]) -> list[tuple[bytes, bool]]:
    """(answer bytes, served from cache) for each resolved query, in order."""
    keys = [q.cache_key(p.bundle.fingerprint, p.retrieval) for q in queries]
    hits = await state.cache.get_many(keys)  # one round trip (MGET) for a batch
    results: list[tuple[bytes, bool] | None] = [None] * len(queries)
    missing = []
    for i, raw in enumerate(hits):
        if raw is not None:
            if looks_like_answer(raw):
                results[i] = (raw, True)
                continue
            log.warning("ignoring a corrupt cache entry %s", keys[i])
        missing.append(i)
    if len(missing) < len(queries):
        state.metrics.cache_hits.inc(len(queries) - len(missing))
    if missing:
        state.metrics.cache_misses.inc(len(missing))

        async def compute() -> list[bytes]:
            answers = await state.batched([queries[i] for i in missing])
            # Written after the response, off its path: a slow cache never delays an answer.
            state.spawn(state.cache.set_many([(keys[i], a) for i, a in zip(missing, answers)], state.settings.cache_ttl_s))
            return answers

        flight_key = "|".join(keys[i] for i in missing)
        answers, shared = await state.singleflight.run(flight_key, compute)
        if shared:
            state.metrics.shared.inc(len(missing))
        for i, a in zip(missing, answers):
            results[i] = (a, False)
    return [r for r in results if r is not None]
