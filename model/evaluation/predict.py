"""Top-k answers of one query from a score vector, with known facts filtered or flagged.

`top_k_with_filter` is the one ranking rule every prediction path uses (exhaustive prediction
in `model.pipeline.predict` and `imf predict`, the service's retrieve-then-rescore and
exhaustive paths), so that they can only differ in the scores they feed it.
`exhaustive_scores` is the slow, obviously correct scorer the service's fast path is checked
against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model.network.imf import IMF


@dataclass
class Ranked:
    """One answer: entity index, fused score, 1-based rank in the answer list, known fact or not."""

    entity: int
    score: float
    rank: int
    known: bool


def known_mask(answers: np.ndarray, size: int) -> np.ndarray:
    """(size,) bool: True at the entity indices in `answers` (a query's known answers)."""
    mask = np.zeros(size, dtype=bool)
    mask[answers] = True
    return mask


def top_k_with_filter(scores: np.ndarray, known: np.ndarray, k: int, *, filter_known: bool, ids: np.ndarray | None = None) -> list[Ranked]:
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
    return [Ranked(int(e), float(scores[e]), i + 1, bool(known[e])) for i, e in enumerate(order)]


@torch.no_grad()
def exhaustive_scores(model: IMF, entity: int, relation: int, tables: dict[str, Tensor] | None = None) -> np.ndarray:
    """Fused probability p of every entity for one query (relation with reciprocal): (N,) float64."""
    e = torch.tensor([entity])
    r = torch.tensor([relation])
    _, _, p = model.score_candidates(e, r, tables=tables)
    return p[0].numpy()
