"""Finding names fast: close-name suggestions and substring search with a bounded cost per query.

`NameIndex` is built once over a vocabulary and then answers

- `close(query)`: names that look like `query` (difflib's ratio >= 0.6, best first), for "did
  you mean" suggestions. Candidates come from a character-trigram inverted index: the query's
  rarest trigrams vote, at most `MAX_POSTINGS` posting entries are read, and only the
  `RERANK` names with the most shared trigrams are compared with difflib. So a query costs the
  same at 10k and at 1M names, where difflib over every name is linear in the vocabulary
  (bench/name_index.py measures both; docs/benchmarks.md has the figures).
- `search(query, limit)`: the `/entities?q=` tiers: exact name or id, then names starting with
  the query, then names or ids containing it, each tier by weight (training degree), then by
  index. Prefixes come from a sorted array (bisect), substrings from intersecting the trigram
  postings of the query and checking the survivors in weight order until `limit` are found.

Everything is case-insensitive. Results are entry indices (entity ids in the bundle).
"""

from __future__ import annotations

import bisect
import difflib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

MAX_POSTINGS = 50_000  # posting entries read per close() query
RERANK = 64  # names compared with difflib per close() query
MAX_VERIFY = 20_000  # substring candidates checked per search() query
CUTOFF = 0.6  # difflib ratio a suggestion needs (difflib.get_close_matches' default)


def _grams(text: str) -> set[str]:
    """Character trigrams of `text` (already lower-cased), padded so short names have some."""
    padded = f"\x02{text}\x03"
    return {padded[i:i + 3] for i in range(max(1, len(padded) - 2))}


class NameIndex:
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


def close_matches(name: str, known: Sequence[str], n: int = 5) -> list[str]:
    """Up to n entries of `known` that look like `name` (case-insensitive), best first: the
    suggestion rule for small vocabularies (datasets, modalities, relations), the same as
    `NameIndex.close` on a large one."""
    known = list(known)
    return [known[i] for i in NameIndex(known).close(name, n=n)]


__all__ = ["NameIndex", "close_matches"]
