"""model.kg.names: the trigram name index agrees with slow, obviously correct scans, and answers
exactly as the implementation it replaced, kept below as `ReferenceNameIndex`.

The comparisons run on the shipped bundle's real vocabulary (artifacts/default) and on random
vocabularies made to be awkward (shared names, names equal to other entries' ids, ids equal but
for case, empty and one-character names, surrounding blanks, characters whose lower case is
longer or depends on context, characters outside the BMP, the padding characters themselves),
with the index's limits both as shipped and shrunk so that every budget and cap is reached.
"""

from __future__ import annotations

import bisect
import difflib
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest

from model.bundle.format import load_bundle
from model.errors import MAX_CANDIDATES, AmbiguousNameError, UnknownNameError
from model.kg import names as names_module
from model.kg.names import CUTOFF, MAX_POSTINGS, MAX_VERIFY, RERANK, NameIndex, SortedTexts, close_matches
from model.kg.vocab import Vocabulary, _by_name, _named, name_key

REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- the reference
# The previous implementation of NameIndex (and of the Vocabulary's exact-name maps), kept
# verbatim but for the class name, as the obviously correct reference: Python sets, dicts of
# lists and sorted() over lower-cased copies of every name. It cost 14 s and 625 MB at a
# million names; the new one must answer every query exactly as this one does. It reads the
# limits (MAX_POSTINGS, RERANK, MAX_VERIFY, CUTOFF) from this module's globals, which the tests
# that shrink the limits patch here as well as in model.kg.names.


def _grams(text: str) -> set[str]:
    """Character trigrams of `text` (already lower-cased), padded so short names have some."""
    padded = f"\x02{text}\x03"
    return {padded[i:i + 3] for i in range(max(1, len(padded) - 2))}


class ReferenceNameIndex:
    """Trigram index over names (and optional ids) of a vocabulary; see the module doc."""

    def __init__(self, names: Sequence[str], ids: Sequence[str] | None = None, weights: np.ndarray | None = None) -> None:
        """names[i], ids[i]: entry i's name and id; weights: (n,) ranking weight, higher first."""
        self.names = list(names)
        self.lower = [s.lower() for s in self.names]
        self.ids_lower = [s.lower() for s in ids] if ids is not None else None
        n = len(self.names)
        self.weights = np.zeros(n) if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), not {self.weights.shape}")
        # order[r] = entry at weight rank r (highest first, ties by index); rank_of[i] its rank
        self.order = np.lexsort((np.arange(n), -self.weights))
        self.rank_of = np.empty(n, dtype=np.int64)
        self.rank_of[self.order] = np.arange(n)
        postings: dict[str, list[int]] = defaultdict(list)
        sizes = np.zeros(n, dtype=np.float64)
        for i, low in enumerate(self.lower):
            grams = _grams(low)
            sizes[i] = len(grams)
            for g in grams:
                postings[g].append(i)
        self._gram_counts = sizes
        self._name_postings = {g: np.asarray(v, dtype=np.int32) for g, v in postings.items()}
        if self.ids_lower is not None:
            id_postings: dict[str, list[int]] = defaultdict(list)
            for i, low in enumerate(self.ids_lower):
                for g in _grams(low):
                    id_postings[g].append(i)
            self._id_postings = {g: np.asarray(v, dtype=np.int32) for g, v in id_postings.items()}
        else:
            self._id_postings = {}
        self._by_id: dict[str, int] = {}  # lower-cased id -> entry (names are found by bisect)
        if self.ids_lower is not None:
            for i in self.order.tolist():  # the heaviest entry wins a shared id
                self._by_id.setdefault(self.ids_lower[i], i)
        self._sorted = sorted(range(n), key=lambda i: self.lower[i])
        self._sorted_keys = [self.lower[i] for i in self._sorted]

    def __len__(self) -> int:
        return len(self.names)

    # -------------------------------------------------------------- suggestions

    def close(self, query: str, n: int = 5, cutoff: float = CUTOFF) -> list[int]:
        """Up to n entries whose name looks like `query`, best first (difflib ratio >= cutoff)."""
        q = query.strip().lower()
        if not q or not self.names:
            return []
        q_grams = _grams(q)
        grams = sorted((g for g in q_grams if g in self._name_postings), key=lambda g: len(self._name_postings[g]))
        picked, budget = [], MAX_POSTINGS
        for g in grams:  # rarest first: they say the most and cost the least
            post = self._name_postings[g]
            if len(post) > budget:
                continue
            picked.append(post)
            budget -= len(post)
        if not picked:
            return []
        cand, votes = np.unique(np.concatenate(picked), return_counts=True)
        # Jaccard similarity of the trigram sets (over the trigrams read), so long names that
        # share many trigrams do not crowd out short close ones.
        jaccard = votes / (len(q_grams) + self._gram_counts[cand] - votes)
        top = cand[np.argsort(-jaccard, kind="stable")[:RERANK]]
        matcher = difflib.SequenceMatcher()
        matcher.set_seq2(q)
        scored = []
        for i in top.tolist():
            matcher.set_seq1(self.lower[i])
            if matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff:
                r = matcher.ratio()
                if r >= cutoff:
                    scored.append((-r, int(self.rank_of[i]), i))
        scored.sort()
        out, seen = [], set()
        for _, _, i in scored:  # one suggestion per distinct name
            if self.lower[i] not in seen:
                seen.add(self.lower[i])
                out.append(i)
            if len(out) == n:
                break
        return out

    # -------------------------------------------------------------- search

    def exact(self, query: str) -> int | None:
        """The entry whose name or id equals `query` (case-insensitive; heaviest if several)."""
        hits = self._tier_exact(query.strip().lower())
        return min(hits, key=lambda i: self.rank_of[i]) if hits else None

    def search(self, query: str, limit: int = 10) -> list[int]:
        """Entries matching `query`: exact, then prefix, then substring (see the module doc)."""
        q = query.strip().lower()
        if not q or limit < 1:
            return []
        tier0 = self._tier_exact(q)
        out: list[int] = sorted(tier0, key=lambda i: self.rank_of[i])
        taken = set(out)
        if len(out) < limit:
            for i in self._tier_prefix(q, taken, limit - len(out)):
                out.append(i)
                taken.add(i)
        if len(out) < limit:
            out.extend(self._tier_substring(q, taken, limit - len(out)))
        return out[:limit]

    def _tier_exact(self, q: str) -> set[int]:
        lo = bisect.bisect_left(self._sorted_keys, q)
        hits = set()
        for j in range(lo, len(self._sorted_keys)):
            if self._sorted_keys[j] != q:
                break
            hits.add(self._sorted[j])
        i = self._by_id.get(q)
        if i is not None:
            hits.add(i)
        return hits

    def _tier_prefix(self, q: str, taken: set[int], limit: int) -> list[int]:
        lo = bisect.bisect_left(self._sorted_keys, q)
        hi = bisect.bisect_left(self._sorted_keys, q + "\U0010ffff")
        ids = np.asarray(self._sorted[lo:hi], dtype=np.int64)
        if len(ids) == 0:
            return []
        ranks = self.rank_of[ids]
        want = min(len(ids), limit + len(taken))
        part = np.argpartition(ranks, want - 1)[:want] if want < len(ids) else np.arange(len(ids))
        best = ids[part[np.argsort(ranks[part])]]
        return [int(i) for i in best if int(i) not in taken][:limit]

    def _candidates(self, q: str, postings: dict[str, np.ndarray]) -> np.ndarray | None:
        """Entries that contain every inner trigram of q (a superset of those containing q);
        None when q is too short to have one (the caller then scans in weight order)."""
        inner = {q[i:i + 3] for i in range(len(q) - 2)}
        if not inner:
            return None
        lists = []
        for g in inner:
            post = postings.get(g)
            if post is None:
                return np.empty(0, dtype=np.int64)
            lists.append(post)
        lists.sort(key=len)
        cand = lists[0]
        for post in lists[1:]:
            if len(cand) == 0:
                break
            cand = np.intersect1d(cand, post, assume_unique=True)
        return cand.astype(np.int64)

    def _tier_substring(self, q: str, taken: set[int], limit: int) -> list[int]:
        pools = [self._candidates(q, self._name_postings)]
        if self.ids_lower is not None:
            pools.append(self._candidates(q, self._id_postings))
        if any(p is None for p in pools):  # 1-2 characters: walk entries in weight order
            ordered = self.order[:MAX_VERIFY]
        else:
            cand = np.unique(np.concatenate(pools)) if pools else np.empty(0, dtype=np.int64)
            ordered = cand[np.argsort(self.rank_of[cand])][:MAX_VERIFY]
        out = []
        for i in ordered.tolist():
            if i in taken:
                continue
            if q in self.lower[i] or (self.ids_lower is not None and q in self.ids_lower[i]):
                out.append(i)
                if len(out) == limit:
                    break
        return out


class ReferenceVocabulary:
    """The previous Vocabulary entity lookups: exact names from dict maps (model.kg.vocab's
    _by_name / _named, which the relation names still use), suggestions and search from
    ReferenceNameIndex."""

    def __init__(self, ids: list[str], names: list[str], weights: np.ndarray) -> None:
        self.ids, self.names = ids, names
        self.index = ReferenceNameIndex(names, ids, weights)
        self.maps = _by_name(names, np.argsort(-weights, kind="stable").tolist())
        self.by_id = {e: i for i, e in enumerate(ids)}

    def entities_named(self, name: str) -> list[int]:
        return _named(self.maps, name)

    def entity(self, key: str) -> object:
        """The entity, or ("ambiguous", ids listed, total), or ("unknown", suggestions)."""
        if key in self.by_id:
            return self.by_id[key]
        hits = self.entities_named(key)
        if len(hits) == 1:
            return hits[0]
        if hits:
            return ("ambiguous", [self.ids[i] for i in hits[:MAX_CANDIDATES]], len(hits))
        return ("unknown", [self.names[i] for i in self.index.close(key)])


def entity_outcome(v: Vocabulary, key: str) -> object:
    """Vocabulary.entity's answer in ReferenceVocabulary.entity's terms."""
    try:
        return v.entity(key)
    except AmbiguousNameError as exc:
        return ("ambiguous", [c.id for c in exc.candidates], exc.total)
    except UnknownNameError as exc:
        return ("unknown", list(exc.suggestions))


# ----------------------------------------------------------------------------- queries and vocabularies

SWAPS = list("aeiouxz 0-.éöİıσςΣ東🙂") + ["\x00", "\x02", "\x03"]
BLANKS = ["", "", " ", "  ", "\t", "\n", "\u3000", "\x85", "\x1c"]
EXTRA = ["", " ", "\t\n ", "\u3000", "a", "e", "x", "th", "the", "The ", "/m/", "/m/0", "m/0", "/M/0", "東", "東京", "ö",
         "ölü", "İ", "i̇", "İstanbul", "i̇stanbul", "σ", "ς", "Σ", "ΟΔΟΣ", "οδος", "οδοσ", "\x00", "\x02", "\x03", "\x02a",
         "a\x03", "\x03\x02", "\U0010ffff", "a\U0010ffff", "🙂", "ﬁ", "\u212a", "k", "zzzzzz", "(copy", " (", "a" * 40,
         "\ud800", "straße", "STRASSE"]


def queries(names: Sequence[str], ids: Sequence[str], rng: np.random.Generator, k: int) -> list[str]:
    """k queries of each kind, from random names and ids: a character dropped, a character
    changed (unknown names: the suggestion path), prefixes of 1-8 characters, substrings, ids
    (as they are and upper-cased), id prefixes, id substrings, mixed case, surrounding blanks;
    then EXTRA (blanks, the empty query, single characters, unicode, the padding characters)."""
    def pick(seq: Sequence[str]) -> str:
        return seq[int(rng.integers(len(seq)))]

    out: list[str] = []
    for _ in range(k):
        s, e = pick(names), pick(ids)
        j = int(rng.integers(max(1, len(s))))
        out.append(s[:j] + s[j + 1:])
        out.append(s[:j] + pick(SWAPS) + s[j + 1:])
        out.append(s[: int(rng.integers(1, 9))])
        a = int(rng.integers(len(s) + 1))
        out.append(s[a:a + int(rng.integers(1, 9))])
        out.append(e if rng.random() < 0.5 else e.upper())
        out.append(e[: int(rng.integers(1, len(e) + 1))] if e else e)
        b = int(rng.integers(max(1, len(e))))
        out.append(e[b:b + int(rng.integers(2, 7))])
        out.append("".join(c.upper() if rng.random() < 0.5 else c for c in s))
        out.append(pick(BLANKS) + s + pick(BLANKS))
    return out + EXTRA


PIECES = ["barack", "Obama", "united", "STATES", "of", "a", "x", "jr.", "the", "film", "Ölüdeniz", "東京", "İstanbul",
          "ΟΔΟΣ", "Σίσυφος", "straße", "ǅemal", "\u212a", "ﬁle", "🙂", "\U0001d49c", "\x00", "\x02", "\x03",
          "a\x03\x02b", "\U0010ffff", "/m/0a", "E1", "ς", "σ", "Σ", "i̇", "ı", "ᾼ"]
SHORT = ["a", "A", "x", "İ", "Σ", "σ", " ", "\x02", "\x03", "東", "🙂", "ab", "Ab", "e1"]


def random_vocabulary(seed: int, n: int) -> tuple[list[str], list[str], np.ndarray]:
    """(ids, names, weights) made to be awkward (see the module doc)."""
    rng = np.random.default_rng(seed)

    def pick(seq: Sequence[str]) -> str:
        return seq[int(rng.integers(len(seq)))]

    names: list[str] = []
    ids: list[str] = []
    for i in range(n):
        r = rng.random()
        if r < 0.04:
            eid = pick(ids).swapcase() if ids else "Q0"  # equal to another id but for case
        elif r < 0.08:
            eid = f"ß{i}" if rng.random() < 0.5 else f"Ид{i}"
        elif r < 0.1:
            eid = pick(names) if names else "x"  # an id equal to some entity's name
        else:
            eid = f"/m/0{i:x}" if rng.random() < 0.7 else f"E{i}"
        ids.append(eid)
        r = rng.random()
        if r < 0.05:
            name = ""
        elif r < 0.12:
            name = pick(SHORT)
        elif r < 0.3 and names:
            name = pick(names)  # a shared name, maybe differing in case or blanks
            name = name.upper() if rng.random() < 0.3 else name
        elif r < 0.36:
            name = pick(ids)  # a name equal to an entry's id
            name = name.upper() if rng.random() < 0.5 else name
        else:
            sep = pick([" ", " ", "", "-", "\x02"])
            name = sep.join(pick(PIECES) for _ in range(int(rng.integers(1, 5))))
            name = name.title() if rng.random() < 0.3 else name
        if rng.random() < 0.08:
            name = pick(BLANKS) + name + pick(BLANKS)
        names.append(name)
    weights = rng.integers(0, 4, size=n).astype(float) if seed % 3 else np.zeros(n)
    return ids, names, weights


def same_postings(index: NameIndex, ref: ReferenceNameIndex) -> None:
    """The index holds the reference's trigram postings, list for list, and its trigram counts."""
    pairs = [(index._name_postings, ref._name_postings)]
    if index._id_postings is not None:
        pairs.append((index._id_postings, ref._id_postings))
    for new, old in pairs:
        grams = [g for g in old if len(g) == 3]  # not "\x02\x03", an empty text's: no query has it
        rows = new.find(grams)
        assert -1 not in rows and len(new.keys) == len(grams)
        for g, k in zip(grams, rows):
            assert new.row(k).tolist() == old[g].tolist(), g
            assert new.counts[k] == len(old[g])
    assert index._name_postings.sizes.tolist() == ref._gram_counts.tolist()


def compare(index: NameIndex, ref: ReferenceNameIndex, qs: Iterable[str], limits: Sequence[int] = (1, 10, 100)) -> None:
    """Same answers to every query, and the same substring candidates on the way."""
    for q in qs:
        low = q.strip().lower()
        for new, old in [(index._name_postings, ref._name_postings), (index._id_postings, ref._id_postings)]:
            got, want = (index._candidates(low, new), ref._candidates(low, old)) if new is not None else (None, None)
            assert (got is None and want is None) or got.tolist() == want.tolist(), q  # type: ignore[union-attr]
        assert index.close(q, 5, 0.6) == ref.close(q, 5, 0.6), q
        assert index.exact(q) == ref.exact(q), q
        for limit in limits:
            assert index.search(q, limit) == ref.search(q, limit), (q, limit)


def compare_vocabulary(v: Vocabulary, ref: ReferenceVocabulary, qs: Iterable[str]) -> None:
    for q in qs:
        assert v.entities_named(q) == ref.entities_named(q), q
        assert entity_outcome(v, q) == ref.entity(q), q
        assert v.search_entities(q, 10) == ref.index.search(q, 10), q


# ----------------------------------------------------------------------------- against the reference


@pytest.fixture(scope="module")
def shipped() -> Vocabulary:
    return load_bundle(REPO / "artifacts" / "default", verify=False).vocab


def test_the_shipped_vocabulary_answers_as_the_reference(shipped: Vocabulary) -> None:
    v = shipped
    ref = ReferenceVocabulary(v.entity_ids, v.entity_names, v.entity_weights)
    index = v.name_index  # as the service builds it: with the order of the exact-name lookups
    assert index._sorted_names.perm is v._entity_by_name.perm
    same_postings(index, ref.index)
    qs = queries(v.entity_names, v.entity_ids, np.random.default_rng(0), 200)  # 1,800 and EXTRA
    compare(index, ref.index, qs, limits=(1, 10))
    compare(index, ref.index, qs[::9], limits=(100,))
    for q in qs[:300]:  # the rarer settings of close()
        assert index.close(q, 20, 0.3) == ref.index.close(q, 20, 0.3), q
        assert index.close(q, 1, 0.9) == ref.index.close(q, 1, 0.9), q
    compare_vocabulary(v, ref, qs[::3])
    for name in v.entity_names[::50]:  # every name finds itself, and its shared-name siblings
        assert v.entities_named(name) == ref.entities_named(name)


@pytest.mark.parametrize("seed,n", [(0, 60), (1, 500), (2, 2500), (3, 1200), (4, 7), (5, 800)])
def test_random_vocabularies_answer_as_the_reference(seed: int, n: int) -> None:
    ids, names, weights = random_vocabulary(seed, n)
    v = Vocabulary(ids, names, [], [], [], weights)
    ref = ReferenceVocabulary(ids, names, weights)
    qs = queries(names, ids, np.random.default_rng(seed + 100), 40)
    same_postings(v.name_index, ref.index)
    compare(v.name_index, ref.index, qs)
    compare(NameIndex(names), ReferenceNameIndex(names), qs[::4])  # no ids, no weights
    compare_vocabulary(v, ref, qs)
    for name in names:
        assert v.entities_named(name) == ref.entities_named(name), name


@pytest.mark.parametrize("pack_bits", [63, 0])
def test_with_every_limit_reached(monkeypatch: pytest.MonkeyPatch, pack_bits: int) -> None:
    # Limits shrunk (here and in model.kg.names) so that close() skips lists for its budget and
    # reranks few, search() caps its checks, lists become bitmaps, a build takes many blocks;
    # pack_bits 0 takes the build path for alphabets too large to pack a pair in an int64.
    here = sys.modules[__name__]
    for module in (here, names_module):
        monkeypatch.setattr(module, "MAX_POSTINGS", 40)
        monkeypatch.setattr(module, "RERANK", 6)
        monkeypatch.setattr(module, "MAX_VERIFY", 25)
    monkeypatch.setattr(names_module, "_DENSE_MIN", 0)
    monkeypatch.setattr(names_module, "_PAIRS_STEP", 97)
    monkeypatch.setattr(names_module, "_PACK_BITS", pack_bits)
    for seed, n in [(6, 1500), (7, 300)]:
        ids, names, weights = random_vocabulary(seed, n)
        index = NameIndex(names, ids, weights)
        assert len(index._name_postings.bitmaps) and len(index._id_postings.bitmaps)  # type: ignore[union-attr]
        ref = ReferenceNameIndex(names, ids, weights)
        same_postings(index, ref)
        compare(index, ref, queries(names, ids, np.random.default_rng(seed), 40))
    names = [f"the {i}" for i in range(400)]  # every name shares the trigrams of "the"
    compare(NameIndex(names), ReferenceNameIndex(names), ["the 123", "the 1", "th", "he 12", "the"])


def test_the_vocabulary_and_its_name_index_sort_the_names_once() -> None:
    # Whichever is built first, the exact-name lookups and the name index share one order of
    # the names, when it is the same order: no name with surrounding blanks, same weight order.
    ids, names, weights = random_vocabulary(8, 300)
    names = [n.strip() for n in names]
    for index_first in (True, False):
        v = Vocabulary(ids, names, [], [], [], weights)
        if index_first:  # as the service warms them
            v.name_index  # noqa: B018
        assert v.name_index._sorted_names.perm is v._entity_by_name.perm
        ref = ReferenceVocabulary(ids, names, weights)
        compare_vocabulary(v, ref, queries(names, ids, np.random.default_rng(1), 10))
    # blanks: each sorts its own
    ids, names, weights = ["a", "b", "c"], [" Paris", "paris", "Lyon"], np.array([1.0, 2.0, 3.0])
    for index_first in (True, False):
        v = Vocabulary(ids, names, [], [], [], weights)
        if index_first:
            v.name_index  # noqa: B018
        assert v.entities_named("PARIS ") == [1, 0] and not v._entity_by_name.plain
        assert v.name_index._sorted_names.perm is not v._entity_by_name.perm
        assert v.search_entities("paris") == [1, 0] and v.name_index.exact(" paris") == 1
        assert v.search_entities("") == [] and v.entities_named("") == []
    # weights the index ranks alike (as float64) but the exact-name lookups do not (int64)
    ids, names, degree = ["a", "b"], ["Paris", "paris"], np.array([2**53, 2**53 + 1])
    v = Vocabulary(ids, names, [], [], [], degree)
    v.name_index  # noqa: B018
    assert v.entities_named("paris") == [1, 0] == ReferenceVocabulary(ids, names, degree).entities_named("paris")


@pytest.mark.parametrize("space", [c for c in map(chr, range(0x3001)) if c.isspace()])
def test_names_with_blanks_of_every_kind(space: str) -> None:
    # name_key strips, then lower-cases; the sorted lookups lower-case, then strip: the same,
    # for every kind of blank, next to the characters whose lower case depends on context.
    names = [f"{space}ΑΣ", f"ΑΣ{space}", f"{space}Σ{space}", f"İ{space}", f"{space}{space}", "σ", f"aς{space}x", "ΑΣ"]
    ids = [f"id{i}" for i in range(len(names))]
    weights = np.arange(len(names), dtype=float)
    v = Vocabulary(ids, names, [], [], [], weights)
    ref = ReferenceVocabulary(ids, names, weights)
    for q in [*names, "ας", "αΣ", "ασ", "σ", "ς", "i̇", "", space, "aς x", f"aς{space}x"]:
        assert v.entities_named(q) == ref.entities_named(q), (q, [name_key(n) for n in names])
        assert v.search_entities(q) == ref.index.search(q, 10), q


# ----------------------------------------------------------------------------- building blocks


def test_sorted_texts_sort_as_python_does() -> None:
    rng = np.random.default_rng(11)
    alphabets = {
        "ascii": "abAB \x00\x01\x7f",
        "latin-1": "aäÄÿ\x00 ",
        "bmp": "aİΣσς東\ud800\udfff\uffff ",  # lone surrogates too
        "wide": "a\U0010ffff🙂\U0001d49c\ud83d\ude42 ",  # a surrogate pair as two characters
    }
    for name, chars in alphabets.items():
        base = ["".join(rng.choice(list(chars), size=int(rng.integers(0, 30)))) for _ in range(300)]
        prefix = "x" * 40  # long shared prefixes: many rounds of the radix sort
        texts = base + [prefix + t for t in base[:100]] + base[:50] + [t.upper() for t in base[:50]] + [""]
        first = rng.permutation(len(texts))
        position = np.empty(len(texts), dtype=np.int64)
        position[first] = np.arange(len(texts))
        for strip, key in [(False, str.lower), (True, lambda t: t.strip().lower())]:
            got = SortedTexts.build(texts, first, strip=strip)
            want = sorted(range(len(texts)), key=lambda i: (key(texts[i]), position[i]))
            assert got.perm.tolist() == want, name
            for q in ["", "a", "x" * 40, "xa", texts[7].lower(), "\U0010ffff"]:
                assert sorted(got.equal(q).tolist()) == [i for i in range(len(texts)) if key(texts[i]) == q]
                assert sorted(got.starting(q).tolist()) == [i for i in range(len(texts)) if key(texts[i]) >= q and key(texts[i]) < q + "\U0010ffff"]
    # an alphabet of more than 65,535 characters (32-bit ranks)
    texts = ["".join(map(chr, range(start, start + 200))) for start in range(0x20000, 0x20000 + 70_000, 190)]
    texts += [t[:150] for t in texts[:20]] + ["", "a"]
    got = SortedTexts.build(texts, np.arange(len(texts)))
    assert got.perm.tolist() == sorted(range(len(texts)), key=lambda i: (texts[i].lower(), i))
    assert names_module._Encoded(texts).ranks.dtype.itemsize == 4


def test_top_is_the_head_of_a_stable_argsort() -> None:
    rng = np.random.default_rng(5)
    for m in (0, 1, 5, 64, 65, 1000):
        scores = rng.integers(0, 7, size=m) / rng.integers(1, 4, size=m)  # many ties
        for k in (0, 1, 6, 64, 2000):
            assert names_module._top(scores, k).tolist() == np.argsort(-scores, kind="stable")[:k].tolist()


def test_encoded_ranks_spell_the_lower_cased_texts() -> None:
    texts = ["Paris", "", "İstanbul", "ΟΔΟΣ ΑΣ", "\x02\x03", "STRASSE straße", "🙂Ab", "\ud800x", "K\u212a", "ǅ", "a" * 300]
    for sample in (texts, texts[:1], [t for t in texts if t.isascii()], []):
        enc = names_module._Encoded(sample)
        codes = np.concatenate(([0], enc.alphabet))[enc.ranks.astype(np.int64)]
        for i, t in enumerate(sample):
            s, n = int(enc.starts[i]), int(enc.lens[i])
            assert "".join(map(chr, codes[s:s + n])) == t.lower()
            assert codes[s - 1] == 2 and codes[s + n] == 3


# ----------------------------------------------------------------------------- against linear scans

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
