"""Known answers of (entity, relation) queries, as a compressed sparse row (CSR) index.

Link prediction asks (h, r, ?) for tails and (?, r, t) for heads; with reciprocal relations both
are one kind of query (e, r') where r' = r for tails and r' = r + R (R = number of base
relations) for heads. `AnswerIndex` maps every query to the sorted entity ids that complete it in
a set of triples. Training uses it to build 1-N label matrices, evaluation to filter other true
answers, serving to exclude or flag known facts: one structure, vectorised with numpy, no Python
loops over triples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


DIRECTIONS = ("tail", "head")


def query_relation(relation, direction: str, num_relations: int):
    """The relation id a query is asked with: r for tails, its reciprocal r + R for heads.
    `relation` may be an int or an integer array. The one place the reciprocal offset lives."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    return relation if direction == "tail" else relation + num_relations


def to_queries(triples: np.ndarray, num_relations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both directions of every triple as queries with reciprocal relations.

    triples: (n, 3) [h, r, t] -> entities (2n,), relations (2n,), answers (2n,): first the n
    tail queries (h, r) -> t, then the n head queries (t, r + R) -> h.
    """
    h, r, t = triples[:, 0], triples[:, 1], triples[:, 2]
    return (
        np.concatenate([h, t]).astype(np.int64),
        np.concatenate([r, query_relation(r, "head", num_relations)]).astype(np.int64),
        np.concatenate([t, h]).astype(np.int64),
    )


class AnswerIndex:
    """CSR index: query (e, r') -> sorted unique answers, for r' in [0, 2R)."""

    def __init__(self, triples: np.ndarray, num_entities: int, num_relations: int) -> None:
        """triples: (n, 3) int array of [head, relation, tail] (duplicates are harmless)."""
        self.num_entities = num_entities
        self.num_relations = num_relations
        ents, rels, answers = to_queries(np.asarray(triples, dtype=np.int64).reshape(-1, 3), num_relations)
        keys = ents * (2 * num_relations) + rels
        order = np.lexsort((answers, keys))
        keys, answers = keys[order], answers[order]
        # Drop duplicate (key, answer) pairs so every answer list is unique and sorted.
        if len(keys):
            keep = np.ones(len(keys), dtype=bool)
            keep[1:] = (keys[1:] != keys[:-1]) | (answers[1:] != answers[:-1])
            keys, answers = keys[keep], answers[keep]
        self.keys, starts = np.unique(keys, return_index=True)
        self.offsets = np.append(starts, len(keys)).astype(np.int64)
        self.answers = answers

    def __len__(self) -> int:
        """Number of distinct queries."""
        return len(self.keys)

    def query_entities(self) -> np.ndarray:
        """(Q,) entity of each distinct query, in key order."""
        return self.keys // (2 * self.num_relations)

    def query_relations(self) -> np.ndarray:
        """(Q,) relation (with reciprocals) of each distinct query, in key order."""
        return self.keys % (2 * self.num_relations)

    def rows(self, entities: np.ndarray, relations: np.ndarray) -> np.ndarray:
        """Row of each query in the index, -1 where the query has no known answer. (B,) -> (B,)."""
        qk = np.asarray(entities, dtype=np.int64) * (2 * self.num_relations) + np.asarray(relations, dtype=np.int64)
        pos = np.searchsorted(self.keys, qk)
        pos_clipped = np.minimum(pos, max(len(self.keys) - 1, 0))
        found = (pos < len(self.keys)) & (self.keys[pos_clipped] == qk) if len(self.keys) else np.zeros(len(qk), bool)
        return np.where(found, pos_clipped, -1)

    def answers_of(self, entity: int, relation: int) -> np.ndarray:
        """Sorted known answers of one query (empty when none)."""
        row = int(self.rows(np.array([entity]), np.array([relation]))[0])
        if row < 0:
            return np.empty(0, dtype=np.int64)
        return self.answers[self.offsets[row]:self.offsets[row + 1]]

    def pairs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All (batch position, answer) pairs for the given rows (-1 rows have none).

        rows: (B,) -> (positions (P,), answers (P,)), built with repeat/cumsum, no Python loop.
        """
        rows = np.asarray(rows, dtype=np.int64)
        starts = np.zeros(len(rows), dtype=np.int64)
        counts = np.zeros(len(rows), dtype=np.int64)
        valid = rows >= 0
        starts[valid] = self.offsets[rows[valid]]
        counts[valid] = self.offsets[rows[valid] + 1] - starts[valid]
        positions = np.repeat(np.arange(len(rows)), counts)
        # Index of each pair inside its row: a global arange minus the row's first pair index.
        first = np.repeat(np.cumsum(counts) - counts, counts)
        within = np.arange(counts.sum()) - first
        return positions, self.answers[np.repeat(starts, counts) + within]

    def dense(self, entities: np.ndarray, relations: np.ndarray, *, device: torch.device | str = "cpu") -> Tensor:
        """(B, N) bool matrix, True where the entity is a known answer of the query."""
        pos, ans = self.pairs(self.rows(entities, relations))
        mask = torch.zeros(len(entities), self.num_entities, dtype=torch.bool, device=device)
        mask[torch.from_numpy(pos).to(device), torch.from_numpy(ans).to(device)] = True
        return mask
