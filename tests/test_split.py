"""Splits that let a model be evaluated honestly (model.kg.split), on synthetic triples and on
every bundled dataset."""

from __future__ import annotations

import numpy as np
import pytest

from model.kg.dataset import BUILTIN_DATASETS, load_dataset
from model.kg.split import covering_set, parse_fractions, repair_splits, split_triples, top_up_valid

Triple = tuple[str, str, str]


def random_graph(n_entities: int, n_relations: int, n_triples: int, seed: int) -> list[Triple]:
    rng = np.random.default_rng(seed)
    return [(f"e{h}", f"r{r}", f"e{t}") for h, r, t in zip(rng.integers(0, n_entities, n_triples), rng.integers(0, n_relations, n_triples), rng.integers(0, n_entities, n_triples))]


def assert_honest(splits: dict[str, list[Triple]]) -> None:
    """No triple in two splits (or twice in one); every valid/test entity and relation in train."""
    sets = {s: set(t) for s, t in splits.items()}
    for s, t in splits.items():
        assert len(sets[s]) == len(t), f"duplicates in {s}"
    assert not sets["train"] & sets["valid"] and not sets["train"] & sets["test"] and not sets["valid"] & sets["test"]
    ents = {h for h, _, _ in splits["train"]} | {t for _, _, t in splits["train"]}
    rels = {r for _, r, _ in splits["train"]}
    for s in ("valid", "test"):
        for h, r, t in splits[s]:
            assert h in ents and t in ents and r in rels, (s, h, r, t)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_is_honest_and_close_to_the_fractions(seed: int) -> None:
    triples = random_graph(300, 12, 3000, seed)
    triples += triples[:50]  # repeats
    splits, report = split_triples(triples, (0.8, 0.1, 0.1), seed=seed)
    assert_honest(splits)
    assert report["duplicates_dropped"] >= 50
    n = sum(len(v) for v in splits.values())
    assert n == len(set(triples))
    assert len(splits["valid"]) == round(0.1 * n) and len(splits["test"]) == round(0.1 * n)
    assert report["valid_short"] == report["test_short"] == 0


def test_split_is_deterministic_and_seeded() -> None:
    triples = random_graph(200, 5, 1500, 7)
    a, _ = split_triples(triples, seed=3)
    b, _ = split_triples(list(triples), seed=3)
    c, _ = split_triples(triples, seed=4)
    assert a == b and a != c


def test_sparse_graph_keeps_coverage_and_reports_shortfall() -> None:
    # A chain: every triple holds a new entity, so every triple is needed in train.
    triples = [(f"e{i}", "next", f"e{i + 1}") for i in range(100)]
    splits, report = split_triples(triples, (0.5, 0.25, 0.25), seed=0)
    assert_honest(splits)
    kept = report["kept_in_train_for_coverage"]
    assert kept == len(splits["train"]) < 100  # nothing left over for train beyond coverage
    assert len(splits["valid"]) + len(splits["test"]) == 100 - kept
    assert report["valid_short"] + report["test_short"] == 50 - (100 - kept) > 0


def test_covering_set_covers_everything() -> None:
    triples = random_graph(100, 7, 400, 1)
    mask = covering_set(triples, np.random.default_rng(0).permutation(len(triples)))
    kept = [t for t, m in zip(triples, mask) if m]
    assert {h for h, _, _ in kept} | {t for _, _, t in kept} == {h for h, _, _ in triples} | {t for _, _, t in triples}
    assert {r for _, r, _ in kept} == {r for _, r, _ in triples}


def test_repair_drops_leaks_and_counts_them() -> None:
    train = [("a", "r", "b"), ("b", "r", "c"), ("c", "s", "a")]
    valid = [("a", "r", "b"), ("a", "s", "c"), ("a", "s", "c"), ("a", "r", "z"), ("b", "s", "a")]
    test = [("b", "s", "a"), ("a", "q", "b")]
    out, report = repair_splits({"train": train, "valid": valid, "test": test})
    assert_honest(out)
    assert out["valid"] == [("a", "s", "c")]
    assert out["test"] == [("b", "s", "a")]
    assert report == {
        "train_duplicates_dropped": 0, "valid_duplicates_dropped": 1, "test_duplicates_dropped": 0,
        "valid_unseen_in_train_dropped": 1, "valid_in_train_dropped": 1,
        "test_unseen_in_train_dropped": 1, "test_in_train_dropped": 0,
        "valid_in_test_dropped": 1,
    }


def test_top_up_moves_only_what_train_can_spare() -> None:
    triples = random_graph(100, 4, 800, 5)
    splits, _ = split_triples(triples, (1.0, 0.0, 0.0))
    out, moved = top_up_valid({**splits, "valid": [], "test": []}, 200, seed=0)
    assert moved == 200 == len(out["valid"])
    assert len(out["train"]) + len(out["valid"]) == len(splits["train"])
    assert_honest(out)


def test_parse_fractions() -> None:
    assert parse_fractions("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    for bad in ("0.8,0.1", "0.5,0.5,0.5", "a,b,c", "0,0.5,0.5", "1.1,-0.1,0"):
        with pytest.raises(ValueError, match="--split"):
            parse_fractions(bad)


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_every_bundled_dataset_has_honest_splits(name: str) -> None:
    """Disjoint splits, every valid/test entity and relation in train: on the committed data."""
    ds = load_dataset(name, with_features=False)
    as_tuples = {s: [tuple(map(int, t)) for t in ds.split(s)] for s in ("train", "valid", "test")}
    assert_honest(as_tuples)  # type: ignore[arg-type]
