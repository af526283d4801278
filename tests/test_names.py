"""model.kg.names: the trigram name index agrees with slow, obviously correct scans."""

from __future__ import annotations

import difflib

import numpy as np
import pytest

from model.kg.names import MAX_POSTINGS, NameIndex, close_matches

WORDS = ["barack", "obama", "united", "states", "of", "america", "steven", "spielberg", "new", "york", "city",
         "paris", "france", "film", "award", "best", "actor", "the", "a", "jr.", "ölüdeniz", "東京", "x"]


def vocabulary(seed: int, n: int) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    names = [" ".join(rng.choice(WORDS, size=rng.integers(1, 4))).title() for _ in range(n)]
    ids = [f"/m/{i:05x}" for i in range(n)]
    return names, ids, rng.integers(0, 20, size=n).astype(float)


def slow_search(names: list[str], ids: list[str], weights: np.ndarray, query: str, limit: int) -> list[int]:
    """The linear scan the index replaces: tiers exact / prefix / substring, each by weight."""
    q = query.strip().lower()
    scored = []
    for i, (name, eid) in enumerate(zip(names, ids)):
        low = name.lower()
        if low == q or eid.lower() == q:
            tier = 0
        elif low.startswith(q):
            tier = 1
        elif q in low or q in eid.lower():
            tier = 2
        else:
            continue
        scored.append((tier, -weights[i], i))
    return [i for _, _, i in sorted(scored)[:limit]] if q else []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_equals_the_linear_scan(seed: int) -> None:
    names, ids, weights = vocabulary(seed, 3000)
    index = NameIndex(names, ids, weights)
    queries = ["obama", "Barack Obama", "bar", "ba", "b", "a", "states of", " of ", "/m/00a", "/m/00a1f", "zzz", "东", "东京", "ölü", "Jr.", "x"]
    queries += [names[i] for i in range(0, 3000, 97)] + [names[i][1:5] for i in range(0, 3000, 89)]
    for q in queries:
        for limit in (1, 10, 100):
            got = index.search(q, limit)
            want = slow_search(names, ids, weights, q, limit)
            # the short-query walk stops after MAX_VERIFY entries; 3000 entries are all walked
            assert got == want, (q, limit)


def test_close_names_find_a_typo_first() -> None:
    # difflib over every name is the reference. The index compares only the RERANK names that
    # share the most trigrams, so on this deliberately repetitive vocabulary it may miss the
    # best one now and then; nearly always it agrees, and the misspelt name is suggested.
    names, ids, weights = vocabulary(3, 5000)
    index = NameIndex(names, ids, weights)
    lowered = list({n.lower() for n in names})
    rng = np.random.default_rng(4)
    tried = agree = found = 0
    for i in rng.choice(len(names), 80, replace=False).tolist():
        name = names[i]
        if len(name) < 6:
            continue
        j = int(rng.integers(1, len(name) - 1))
        typo = name[:j] + name[j + 1:]  # one character dropped
        got = [names[k].lower() for k in index.close(typo)]
        ref = difflib.get_close_matches(typo.lower(), lowered, n=1)
        ratio = lambda a: difflib.SequenceMatcher(None, typo.lower(), a).ratio()  # noqa: E731
        tried += 1
        agree += bool(got) and ratio(got[0]) >= ratio(ref[0]) - 1e-12
        found += name.lower() in got
    assert tried >= 40
    assert agree >= 0.9 * tried and found >= 0.9 * tried, (tried, agree, found)


def test_close_matches_small_vocabulary_and_no_match() -> None:
    rels = ["likes", "lives in", "born in", "film/director"]
    assert close_matches("lieks", rels)[0] == "likes"
    assert close_matches("qqqqqq", rels) == []
    assert close_matches("", rels) == []
    assert NameIndex([]).close("x") == [] and NameIndex([]).search("x") == []


def test_close_reads_a_bounded_number_of_postings() -> None:
    # Every name shares the trigrams of "the"; a query made of them alone reads no posting list
    # longer than the budget, and still answers from its rarer trigrams.
    n = MAX_POSTINGS + 10
    names = [f"the {i}" for i in range(n)]
    index = NameIndex(names)
    assert index.close("the 12345")[0] == names.index("the 12345")


def test_weights_rank_shared_names_and_tiers() -> None:
    index = NameIndex(["Paris", "Paris", "Paris Hilton", "Le Paris"], ["e0", "e1", "e2", "e3"], np.array([1.0, 5.0, 9.0, 3.0]))
    assert index.search("paris") == [1, 0, 2, 3]  # exact (by weight), prefix, substring
    assert index.exact("PARIS") == 1 and index.exact("e3") == 3 and index.exact("nope") is None
    # a name equal to another entry's id: both are exact matches, by weight
    clash = NameIndex(["E3", "Lyon", "E3 Hall"], ["x9", "e3", "x8"], np.array([5.0, 1.0, 3.0]))
    assert clash.search("e3") == [0, 1, 2] and clash.exact("E3") == 0  # Lyon (id e3) before the prefix match
    with pytest.raises(ValueError, match="weights"):
        NameIndex(["a"], weights=np.ones(2))
