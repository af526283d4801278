"""AnswerIndex (the CSR of known answers) against a dict-of-sets reference."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from model.kg.triples import AnswerIndex, to_queries


def reference(triples: np.ndarray, num_relations: int) -> dict[tuple[int, int], set[int]]:
    ref: dict[tuple[int, int], set[int]] = defaultdict(set)
    for h, r, t in triples.tolist():
        ref[(h, r)].add(t)
        ref[(t, r + num_relations)].add(h)
    return ref


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_index_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, nrel = 30, 4
    triples = np.stack([rng.integers(0, n, 200), rng.integers(0, nrel, 200), rng.integers(0, n, 200)], axis=1)
    triples = np.concatenate([triples, triples[:20]])  # duplicates are harmless
    index = AnswerIndex(triples, n, nrel)
    ref = reference(triples, nrel)
    assert len(index) == len(ref)
    for (e, r), answers in ref.items():
        assert index.answers_of(e, r).tolist() == sorted(answers)
    ents = rng.integers(0, n, 50)
    rels = rng.integers(0, 2 * nrel, 50)
    dense = index.dense(ents, rels).numpy()
    for i, (e, r) in enumerate(zip(ents.tolist(), rels.tolist())):
        assert set(np.flatnonzero(dense[i]).tolist()) == ref.get((e, r), set())
    rows = index.rows(ents, rels)
    assert all((row >= 0) == ((e, r) in ref) for row, e, r in zip(rows, ents.tolist(), rels.tolist()))
    # the query list covers exactly the reference's keys
    keys = set(zip(index.query_entities().tolist(), index.query_relations().tolist()))
    assert keys == set(ref)


def test_unknown_queries_and_empty_index() -> None:
    index = AnswerIndex(np.array([[0, 0, 1]]), 3, 1)
    assert index.answers_of(2, 0).tolist() == []
    assert index.answers_of(1, 1).tolist() == [0]  # reciprocal: (1, r^-1) -> 0
    assert index.rows(np.array([2, 0]), np.array([0, 0])).tolist() == [-1, 0]
    pos, ans = index.pairs(np.array([-1, -1]))
    assert pos.tolist() == [] and ans.tolist() == []
    empty = AnswerIndex(np.zeros((0, 3), dtype=np.int64), 3, 1)
    assert len(empty) == 0 and empty.answers_of(0, 0).tolist() == []
    assert not empty.dense(np.array([0]), np.array([0])).any()


def test_to_queries_orders_tails_then_heads() -> None:
    e, r, a = to_queries(np.array([[1, 0, 2], [3, 1, 4]]), 2)
    assert e.tolist() == [1, 3, 2, 4]
    assert r.tolist() == [0, 1, 2, 3]
    assert a.tolist() == [2, 4, 1, 3]
