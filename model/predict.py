"""Exhaustive prediction: score every entity with the full model, filter known facts, take top-k.

This is the slow, obviously correct path: `imf predict` uses it, and the service checks its
retrieve-then-rescore path against it (and benchmarks against it as the baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model.bundle import Bundle
from model.imf import IMF
from model.triples import DIRECTIONS, AnswerIndex, query_relation  # noqa: F401  (re-exported)


@dataclass
class Prediction:
    entity: int
    score: float
    rank: int
    known: bool


def top_k_with_filter(scores: np.ndarray, known: np.ndarray, k: int, *, filter_known: bool, ids: np.ndarray | None = None) -> list[Prediction]:
    """Top-k of one score vector. scores: (M,) for all entities or for candidates; known: (M,)
    bool aligned; ids: (M,) entity ids of the positions (default: the positions themselves).

    Known answers are removed before the cut when `filter_known` (so k results come back while
    candidates remain) or kept and flagged otherwise. Order: score descending, then entity id
    ascending (deterministic under ties, whatever order the candidates came in). The returned
    `entity` fields are positions in `scores`.
    """
    ids = np.arange(len(scores)) if ids is None else ids
    need = k + (int(known.sum()) if filter_known else 0)
    if need < len(scores) // 4:
        # Only the top `need` can matter: keep every score >= the need-th largest (ties at the
        # boundary included, so the result equals a full sort), then sort just those.
        threshold = np.partition(scores, len(scores) - need)[len(scores) - need]
        pool = np.flatnonzero(scores >= threshold)
        order = pool[np.lexsort((ids[pool], -scores[pool]))]
    else:
        order = np.lexsort((ids, -scores))
    if filter_known:
        order = order[~known[order]]
    order = order[:k]
    return [Prediction(int(e), float(scores[e]), i + 1, bool(known[e])) for i, e in enumerate(order)]


@torch.no_grad()
def exhaustive_scores(model: IMF, entity: int, relation: int, tables: dict[str, Tensor] | None = None) -> np.ndarray:
    """Fused probability p of every entity for one query (relation with reciprocal): (N,) float64."""
    e = torch.tensor([entity])
    r = torch.tensor([relation])
    _, _, p = model.score_candidates(e, r, tables=tables)
    return p[0].numpy()


def predict(bundle: Bundle, head: str, relation: str, *, k: int = 10, direction: str = "tail", filter_known: bool = True) -> list[Prediction]:
    """Exhaustive top-k for a query given by ids or names (see Bundle.entity / Bundle.relation)."""
    e = bundle.entity(head)
    r = query_relation(bundle.relation(relation), direction, bundle.num_relations)
    scores = exhaustive_scores(bundle.model, e, r)
    known = known_mask(bundle.known, e, r, len(scores))
    return top_k_with_filter(scores, known, k, filter_known=filter_known)


def known_mask(index: AnswerIndex, entity: int, relation: int, num_entities: int) -> np.ndarray:
    """(N,) bool: True for the known answers of one query."""
    mask = np.zeros(num_entities, dtype=bool)
    mask[index.answers_of(entity, relation)] = True
    return mask
