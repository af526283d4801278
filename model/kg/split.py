"""Splitting a graph's triples into train / valid / test, and repairing given splits, so that
a model can be evaluated honestly:

- no triple is in two splits (valid triples that are also test triples leave valid: test is the
  benchmark and stays as given; valid and test triples that are training triples are dropped);
- every entity and relation of valid and test occurs in train (a structure embedding cannot be
  learned for one that does not): `split_triples` keeps, for every entity and relation, one triple
  that holds it in train; `repair_splits` drops valid/test triples that would break the rule.

Everything removed or moved is counted in the returned report, under a key that says why; the
importer (model.kg.importer) and the built-in converters (model.kg.builtin) write it to
`dataset.json`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

Triple = tuple[str, str, str]
SPLITS = ("train", "valid", "test")


def deduplicate(triples: Iterable[Triple]) -> tuple[list[Triple], int]:
    """The triples in their order with repeats removed, and how many repeats there were."""
    seen: set[Triple] = set()
    kept: list[Triple] = []
    total = 0
    for t in triples:
        total += 1
        if t not in seen:
            seen.add(t)
            kept.append(t)
    return kept, total - len(kept)


def covering_set(triples: Sequence[Triple], order: np.ndarray) -> np.ndarray:
    """Boolean mask (len(triples),): the triples that must stay in train so that every entity and
    relation occurs there: visiting `triples` in `order`, a triple is taken when it holds an
    entity or relation not yet held by one taken before."""
    needed = np.zeros(len(triples), dtype=bool)
    entities: set[str] = set()
    relations: set[str] = set()
    for i in order:
        h, r, t = triples[i]
        if h not in entities or t not in entities or r not in relations:
            needed[i] = True
            entities.update((h, t))
            relations.add(r)
    return needed


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1): three non-negative numbers summing to 1, train > 0."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--split {text!r}: give three numbers, train,valid,test, e.g. 0.8,0.1,0.1") from None
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise ValueError(f"--split {text!r}: give three non-negative fractions train,valid,test summing to 1, e.g. 0.8,0.1,0.1")
    return parts  # type: ignore[return-value]


def split_triples(triples: Iterable[Triple], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> tuple[dict[str, list[Triple]], dict[str, int]]:
    """Split one set of triples into train / valid / test.

    Duplicates are dropped. The triples are shuffled with `seed`; a covering set (one triple per
    entity and relation, `covering_set`) stays in train; valid and test are then drawn from the
    rest in shuffled order, round(f * n) triples each, and everything else is train. When the
    covering set leaves too few triples to draw from, valid and test get fewer than their share
    (the report's `*_short` keys say by how many). Deterministic for a given seed.
    Returns (splits, report).
    """
    unique, dupes = deduplicate(triples)
    n = len(unique)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    needed = covering_set(unique, order)
    free = [int(i) for i in order if not needed[i]]
    want = {"valid": round(fractions[1] * n), "test": round(fractions[2] * n)}
    assigned = np.zeros(n, dtype=np.int8)  # 0 train, 1 valid, 2 test
    cursor = 0
    report = {"duplicates_dropped": dupes, "kept_in_train_for_coverage": int(needed.sum())}
    for code, split in ((1, "valid"), (2, "test")):
        take = free[cursor:cursor + want[split]]
        cursor += len(take)
        assigned[take] = code
        report[f"{split}_short"] = want[split] - len(take)
    splits = {s: [unique[i] for i in range(n) if assigned[i] == code] for code, s in enumerate(SPLITS)}
    return splits, report


def repair_splits(splits: dict[str, list[Triple]]) -> tuple[dict[str, list[Triple]], dict[str, int]]:
    """Given train / valid / test (valid and test may be empty), make them honest: in-split
    duplicates dropped; valid/test triples with an entity or relation absent from train dropped;
    valid/test triples that are training triples dropped; valid triples that are test triples
    dropped from valid (test stays as given). Returns (splits, report), the report counting each
    drop as `{split}_{reason}_dropped`."""
    out: dict[str, list[Triple]] = {}
    report: dict[str, int] = {}
    for split in SPLITS:
        out[split], report[f"{split}_duplicates_dropped"] = deduplicate(splits.get(split, []))
    ents = {h for h, _, _ in out["train"]} | {t for _, _, t in out["train"]}
    rels = {r for _, r, _ in out["train"]}
    train = set(out["train"])
    for split in ("valid", "test"):
        before = out[split]
        out[split] = [(h, r, t) for h, r, t in before if h in ents and t in ents and r in rels]
        report[f"{split}_unseen_in_train_dropped"] = len(before) - len(out[split])
        before = out[split]
        out[split] = [t for t in before if t not in train]
        report[f"{split}_in_train_dropped"] = len(before) - len(out[split])
    test = set(out["test"])
    before = out["valid"]
    out["valid"] = [t for t in before if t not in test]
    report["valid_in_test_dropped"] = len(before) - len(out["valid"])
    return out, report


def top_up_valid(splits: dict[str, list[Triple]], target: int, seed: int = 0) -> tuple[dict[str, list[Triple]], int]:
    """Move training triples to valid until valid holds `target` triples (or no more can move),
    never one that train needs for coverage (`covering_set`). For a given release whose
    validation split is (nearly) empty after `repair_splits`. Returns (splits, triples moved)."""
    train = splits["train"]
    missing = target - len(splits["valid"])
    if missing <= 0:
        return splits, 0
    order = np.random.default_rng(seed).permutation(len(train))
    needed = covering_set(train, order)
    move = set(int(i) for i in [i for i in order if not needed[i]][:missing])
    out = dict(splits)
    out["valid"] = splits["valid"] + [train[i] for i in sorted(move)]
    out["train"] = [t for i, t in enumerate(train) if i not in move]
    return out, len(move)
