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
  index. Prefixes and exact names come from a sorted permutation (bisect), substrings from
  intersecting the trigram postings of the query and checking the survivors in weight order
  until `limit` are found.

Everything is case-insensitive. Results are entry indices (entity ids in the bundle).

How it is built (a million names and ids in about 1.3 s and 145 MB; the Python sets and dicts
of strings it replaced took 12-14 s and 640 MB): the texts are lower-cased (str.lower for the
few that are not ASCII) and joined into one string, read as one array of code points, each
character replaced by its rank in the vocabulary's alphabet (`_Encoded`). A trigram is then
one integer key and a (trigram, entry) pair one int64; one in-place sort of those pairs gives
the postings, deduplicated per entry, in compressed sparse rows of int32 entries (`_Postings`).
The trigrams in more than MAX_POSTINGS entries (which `close` never reads) are kept as bitmaps
when that is smaller ("/m/" is in every Freebase id). The name and id orders for bisection are
int32 permutations sorted by numpy (`_sort_texts`, a radix sort on the character ranks;
`SortedTexts`, which model.kg.vocab also uses for its exact-name lookups). The lower-cased
texts are not kept: the few a query compares are lower-cased from the names and ids on demand.
The answers are exactly those of the straightforward implementation this replaced, which
tests/test_names.py keeps as the reference and compares with.
"""

from __future__ import annotations

import bisect
import ctypes
import difflib
import itertools
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

MAX_POSTINGS = 50_000  # posting entries read per close() query
RERANK = 64  # names compared with difflib per close() query
MAX_VERIFY = 20_000  # substring candidates checked per search() query
CUTOFF = 0.6  # difflib ratio a suggestion needs (difflib.get_close_matches' default)

_LAST = "\U0010ffff"  # sorts after every character: the names starting with q sort before q + _LAST
_PAIRS_STEP = 1 << 20  # trigram positions handled per step of a build (bounds its temporary arrays)
_DENSE_MIN = MAX_POSTINGS  # longer posting lists may become bitmaps (close() reads none of them)
_PACK_BITS = 63  # (trigram, entry) pairs are packed into one int64 when they fit in this many bits


def _grams(text: str) -> set[str]:
    """Character trigrams of `text` (already lower-cased), padded so short names have some."""
    padded = f"\x02{text}\x03"
    return {padded[i:i + 3] for i in range(max(1, len(padded) - 2))}


# ------------------------------------------------------------------ building blocks


class _Encoded:
    """Texts lower-cased and encoded as character ranks, all in one array.

    alphabet (A,) uint32: the distinct code points of the lower-cased texts (and of the padding),
    ascending. ranks (T,): "\\x02" t0 "\\x03" "\\x02" t1 "\\x03" ..., t_i = texts[i].lower(), each
    character as its 1-based rank in `alphabet` (order-preserving; 0 is left for "past the end"),
    in the narrowest big-endian unsigned type that holds A (>u1, >u2 or >u4; big-endian so that
    `_sort_texts` can read several as one word). Each text is padded as `_grams` pads it, so its
    trigrams can be read straight off the array. starts, lens (n,) int64: t_i is
    ranks[starts[i]:starts[i] + lens[i]].

    Lower-casing: a text that is not ASCII is lower-cased by str.lower (so its length may change:
    U+0130 becomes two characters) and the ASCII ones by the rank table, which maps A-Z to the
    ranks of a-z: ASCII lower-casing is exactly that, and one str.lower over all the texts joined
    took 0.2 s of a million-name build."""

    def __init__(self, texts: Sequence[str]) -> None:
        n = len(texts)
        self.lens = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        other = np.flatnonzero(~np.fromiter(map(str.isascii, texts), dtype=bool, count=n)).tolist()
        if other:
            texts = list(texts)
            for i in other:
                texts[i] = texts[i].lower()
                self.lens[i] = len(texts[i])
        # the joined texts as code points, in the narrowest type that holds the largest one
        top = 0x7F
        if other:
            top = int(np.frombuffer("".join(texts[i] for i in other).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).max())
        joined = "\x03\x02".join(texts)
        if top < 0x100:
            inner, limit = np.frombuffer(joined.encode("latin-1"), dtype=np.uint8), 0x100
        elif top < 0x10000:  # lone surrogates are one UTF-16 unit each, as they are one character
            inner, limit = np.frombuffer(joined.encode("utf-16-le", "surrogatepass"), dtype="<u2"), 0x10000
        else:
            inner, limit = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4"), 0x110000
        del joined
        if len(inner) != max(0, int(self.lens.sum()) + 2 * n - 2):  # cannot happen; never read past a text
            raise AssertionError("encoded lengths do not add up")
        present = np.zeros(limit, dtype=bool)
        present[inner] = True  # (np.bincount would first copy `inner` to int64: slower)
        present[[2, 3]] = bool(n)  # the padding
        present[97:123] |= present[65:91]  # A-Z only occur in ASCII texts, not lower-cased yet
        present[65:91] = False
        self.alphabet = np.flatnonzero(present).astype(np.uint32)
        width = 1 if len(self.alphabet) < 1 << 8 else 2 if len(self.alphabet) < 1 << 16 else 4
        table = np.cumsum(present, dtype=np.int64).astype(f">u{width}")  # code point -> rank
        table[65:91] = table[97:123]
        self.ranks = np.empty(len(inner) + 2 * bool(n), dtype=table.dtype)
        if n:
            self.ranks[1:-1] = table[inner]
            self.ranks[0], self.ranks[-1] = table[2], table[3]
        self.starts = np.empty(n, dtype=np.int64)
        if n:
            self.starts[0] = 1
            np.cumsum(self.lens[:-1] + 2, out=self.starts[1:])
            self.starts[1:] += 1

    def blank_ended(self) -> np.ndarray:
        """(k,) int64: the texts whose first or last character is a space (str.isspace)."""
        spaces = np.array([chr(c).isspace() for c in self.alphabet.tolist()] or [False])
        if not spaces.any():
            return np.zeros(0, dtype=np.int64)
        starts, lens = self.starts, self.lens
        nonempty = lens > 0
        first = spaces[self.ranks[np.where(nonempty, starts, 0)].astype(np.int64) - 1]
        last = spaces[self.ranks[np.where(nonempty, starts + lens - 1, 0)].astype(np.int64) - 1]
        return np.flatnonzero(nonempty & (first | last))

    def strip(self, texts: Sequence[str]) -> bool:
        """Narrow (starts, lens) in place to each text's strip().lower(), which is its lower()
        stripped (lower-casing never makes or unmakes a space, and a space ends the final-sigma
        context just as the string's end does). Only the blank-ended texts are looked at again.
        Whether any text changed."""
        ends = self.blank_ended()
        for i in ends.tolist():
            low = texts[i].lower()
            self.starts[i] += len(low) - len(low.lstrip())
            self.lens[i] = len(low.strip())
        return bool(len(ends))


def _sort_texts(ranks: np.ndarray, starts: np.ndarray, lens: np.ndarray, first: np.ndarray) -> np.ndarray:
    """(n,) int32: entries in the order of their texts (code point order, as Python compares
    str), equal texts in the order they have in `first` ((n,) a permutation of the entries).

    ranks, starts, lens: as in `_Encoded` (rank order is code point order); text i is
    ranks[starts[i]:starts[i] + lens[i]]. A most-significant-digit radix sort: each round sorts
    the entries still tied by (tie group, their next characters packed into one uint64), 8
    characters in the first round; an entry leaves once no other entry shares its text so far.
    numpy sorts all of it: Python's sorted() over a million strings took 0.8 s."""
    n = len(starts)
    width = ranks.dtype.itemsize
    bits, per = 8 * width, 8 // width  # bits per character; characters per 64-bit word
    # words[p]: the `per` characters from position p as one big-endian word (overlapping,
    # unaligned views; `padded` has room for the last ones)
    padded = np.zeros(len(ranks) + per, dtype=ranks.dtype)
    padded[:len(ranks)] = ranks
    base = np.frombuffer(padded.data, dtype=">u8", count=1)
    words = as_strided(base, shape=(len(ranks),), strides=(width,), writeable=False)
    perm = np.array(first, dtype=np.int64)
    sel = np.arange(n)  # positions in perm whose entries are still tied with a neighbour
    group = np.zeros(n, dtype=np.uint64)  # tie group of each, ascending along sel
    done = 0  # characters compared so far (the same for every entry in sel)
    while len(sel):
        group_bits = int(group[-1]).bit_length()
        c = min(per, (64 - group_bits) // bits)  # characters compared this round
        # mask[k]: keeps the c characters but the last k (those past the end of the text)
        chars = (1 << (bits * c)) - 1
        mask = np.array([chars & ~((1 << (bits * k)) - 1) for k in range(c + 1)], dtype=np.uint64)
        entries = perm[sel]
        left = lens[entries] - done  # characters not yet compared, >= 0
        key = words[starts[entries] + done].astype(np.uint64) >> np.uint64(bits * (per - c))
        key &= mask[np.clip(c - left, 0, c)]
        if group_bits:
            key |= group << np.uint64(bits * c)
        order = np.argsort(key, kind="stable")  # stable: ties keep the order of `first`
        perm[sel] = entries[order]
        key, left = key[order], left[order]
        done += c
        same = key[1:] == key[:-1]
        starts_group = np.concatenate(([True], ~same))
        tied = ~starts_group | np.concatenate((same, [False]))
        # a tied entry whose text ended in this window is equal to its group: done with it
        keep = tied & (left >= c)
        group = (np.cumsum(starts_group & keep) - 1)[keep].astype(np.uint64)
        sel = sel[keep]
    return perm.astype(np.int32)


class SortedTexts:
    """Entries ordered by a text key (a lower-cased name, say), for exact and prefix lookups
    by bisection. `perm` (n,) int32 holds the entries in key order (code point order, ties as
    built); the keys are not stored: `key(texts[i])` is computed for the ~20 entries a bisection
    looks at. `plain`: every key is texts[i].lower() (true too of a stripped order in which no
    text had surrounding blanks), so a NameIndex can take the order over."""

    def __init__(self, texts: Sequence[str], perm: np.ndarray, key: Callable[[str], str], plain: bool) -> None:
        self.texts = texts
        self.perm = perm
        self._key = key
        self.plain = plain

    @classmethod
    def build(cls, texts: Sequence[str], first: np.ndarray | None = None, *, strip: bool = False) -> SortedTexts:
        """Entries sorted by texts[i].lower() (or by texts[i].strip().lower() with strip), equal
        keys in the order of `first` ((n,) permutation; default: by index). The list of texts is
        copied (8 MB at a million), so that later changes to it cannot unsort the order."""
        texts = list(texts)
        n = len(texts)
        first = np.arange(n) if first is None else first
        key = _strip_lower if strip else str.lower
        if not n:
            return cls(texts, np.zeros(0, dtype=np.int32), key, True)
        enc = _Encoded(texts)
        plain = not (strip and enc.strip(texts))
        perm = _sort_texts(enc.ranks, enc.starts, enc.lens, first)
        release_free_memory()
        return cls(texts, perm, key, plain)

    def _bisect(self, q: str, right: bool = False) -> int:
        texts, key = self.texts, self._key
        return (bisect.bisect_right if right else bisect.bisect_left)(self.perm, q, key=lambda i: key(texts[i]))

    def equal(self, q: str) -> np.ndarray:
        """(k,) int32: the entries whose key is q, in build order."""
        return self.perm[self._bisect(q):self._bisect(q, right=True)]

    def starting(self, q: str) -> np.ndarray:
        """(k,) int32: the entries whose key starts with q (up to keys with a U+10FFFF right
        after q, which bisection on q + U+10FFFF leaves out, as it always has)."""
        return self.perm[self._bisect(q):self._bisect(q + _LAST)]


def _strip_lower(text: str) -> str:
    return text.strip().lower()


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing).
    A build frees hundreds of MB of temporary arrays; glibc keeps what was freed below the
    arrays that stay (120 MB at a million names) as resident memory until trimmed."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim  # the C library the process runs on
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Callable[[int], int] | None | bool = None


def _dedupe_sorted(a: np.ndarray, id_mask: int) -> tuple[int, np.ndarray]:
    """Drop repeats from sorted (m,) int64 `a` in place, a block at a time. Returns how many are
    left (the distinct values are then a[:returned]) and (r,) int64: `id_mask` of each dropped
    one (the entry of a trigram it has more than once)."""
    kept, last, dropped = 0, None, []
    for b in range(0, len(a), _PAIRS_STEP):
        block = a[b:b + _PAIRS_STEP]
        fresh = np.empty(len(block), dtype=bool)
        fresh[0] = last is None or block[0] != last
        np.not_equal(block[1:], block[:-1], out=fresh[1:])
        last = block[-1]  # a scalar: a copy
        keep = block[fresh]  # a copy, as is the next: writing below cannot change what they hold
        if len(keep) < len(block):
            dropped.append(block[~fresh] & id_mask)
        a[kept:kept + len(keep)] = keep
        kept += len(keep)
    return kept, np.concatenate(dropped) if dropped else np.zeros(0, dtype=np.int64)


class _Postings:
    """Trigram postings of one column of texts (names, or ids), in compressed sparse rows.

    A trigram (a, b, c) has the key (rank(a) << 2w) | (rank(b) << w) | rank(c), with 1-based
    ranks in `alphabet` ((A,) uint32 code points, ascending) and w = A.bit_length() bits.

    keys (K,) int64: the trigrams that occur, ascending; counts (K,) int64: how many entries
    contain each (once per entry, as a set of trigrams counts it).
    offsets (K+1,) int64, entries (P,) int32: the entries containing trigram k, ascending, are
    entries[offsets[k]:offsets[k+1]]; empty for the trigrams kept as bitmaps instead:
    dense (K,) int32, the row of `bitmaps` of trigram k (-1: in `entries`); bitmaps (D, ceil(n/8))
    uint8, bit i (little bit order) set when entry i contains the trigram. A trigram goes there
    when it is in more than MAX_POSTINGS entries (so `close` never reads it) and the bitmap
    is smaller than the list: "/m/" is in every Freebase id.
    sizes (n,) int32: distinct trigrams of each entry (1 for an empty text: "\\x02\\x03")."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.n = len(texts)
        self.encoded = enc = _Encoded(texts)  # kept for _sort_texts; NameIndex drops it
        self.alphabet = enc.alphabet
        self.width = len(self.alphabet).bit_length()
        self._compact(self._build(enc))

    def _build(self, enc: _Encoded) -> np.ndarray:
        """Sort every (trigram, entry) pair, drop repeats, cut into rows: sets keys, counts,
        offsets and sizes, and returns the (P,) int32 entries of every row, dense ones too
        (`_compact` moves those). The big arrays are made once and worked on in place, a block
        at a time: fresh memory is what costs most here."""
        n, w, ranks, starts, lens = self.n, self.width, enc.ranks, enc.starts, enc.lens
        id_bits = max(1, (n - 1).bit_length())
        id_mask = (1 << id_bits) - 1
        # A text of length L has L trigrams, starting at its "\x02" (starts - 1) and at each of
        # its characters but the last one; an empty text has none ("\x02\x03" is no trigram a
        # query can have).
        total = int(lens.sum())
        packed = 3 * w + id_bits <= _PACK_BITS  # (trigram, entry) fits one int64: sort once, in place
        pairs = np.empty(total, dtype=np.int64)
        owner = None if packed else np.empty(total, dtype=np.int32)
        # blocks of whole texts, about _PAIRS_STEP trigrams each
        cut = np.searchsorted(np.cumsum(lens), np.arange(_PAIRS_STEP, total, _PAIRS_STEP), side="right")
        blocks = [(i0, i1) for i0, i1 in zip([0, *cut.tolist()], [*cut.tolist(), n]) if i0 < i1]
        span = max((int(starts[i1 - 1] + lens[i1 - 1] - starts[i0]) + 2 for i0, i1 in blocks), default=2)
        key, tmp, valid = np.empty(span, dtype=np.int64), np.empty(span, dtype=np.int64), np.empty(span, dtype=bool)
        done = 0
        for i0, i1 in blocks:
            a, z = int(starts[i0]) - 1, int(starts[i1 - 1] + lens[i1 - 1]) + 1  # the texts' ranks, pads included
            seg, m = ranks[a:z], z - a - 2  # m positions can start a trigram
            k, t, v = key[:m], tmp[:m], valid[:z - a]
            np.left_shift(seg[:-2], 2 * w, out=k, dtype=np.int64)
            np.left_shift(seg[1:-1], w, out=t, dtype=np.int64)
            k |= t
            k |= seg[2:]
            v[:] = True
            ends = starts[i0:i1] + lens[i0:i1] + 1 - a  # each padded text's end
            v[ends - 1] = False  # the last two positions of a padded text start no trigram
            v[ends - 2] = False
            count = int(lens[i0:i1].sum())
            out = pairs[done:done + count]
            np.compress(v[:-2], k, out=out)
            owners = np.repeat(np.arange(i0, i1, dtype=np.int32), lens[i0:i1])
            if packed:
                out <<= id_bits
                out |= owners
            else:
                owner[done:done + count] = owners
            done += count
        del key, tmp, valid
        if packed:
            pairs.sort()  # by trigram, then entry
            m, dropped = _dedupe_sorted(pairs, id_mask)  # a trigram counted once per entry
            heads, last = [], None
            for b in range(0, m, _PAIRS_STEP):
                k = pairs[b:min(m, b + _PAIRS_STEP)] >> id_bits
                if last is None or k[0] != last:
                    heads.append(np.array([b]))
                heads.append(np.flatnonzero(k[1:] != k[:-1]) + (b + 1))
                last = k[-1]
            head = np.concatenate(heads) if heads else np.zeros(0, dtype=np.int64)
            self.keys = pairs[head] >> id_bits
            # The entries overwrite the pairs they come from: int32 slot j lies in int64 slot
            # j // 2 <= j, which has been read by then (each block is read whole, then written).
            entries = pairs.view(np.int32)
            for b in range(0, m, _PAIRS_STEP):
                block = (pairs[b:min(m, b + _PAIRS_STEP)] & id_mask).astype(np.int32)
                entries[b:b + len(block)] = block
            entries = entries[:m]
        else:  # a huge alphabet: a stable sort by trigram keeps the entries ascending
            order = np.argsort(pairs, kind="stable")
            pairs, owner = pairs[order], owner[order]
            del order
            fresh = np.ones(total, dtype=bool)
            fresh[1:] = (pairs[1:] != pairs[:-1]) | (owner[1:] != owner[:-1])
            dropped = owner[~fresh]
            pairs, entries = pairs[fresh], owner[fresh]
            del fresh, owner
            head = np.flatnonzero(np.concatenate(([True], pairs[1:] != pairs[:-1]))) if len(pairs) else np.zeros(0, dtype=np.int64)
            self.keys = pairs[head]
            m = len(pairs)
        self.offsets = np.append(head, m).astype(np.int64)
        self.counts = np.diff(self.offsets)
        self.sizes = (lens - np.bincount(dropped, minlength=n)).astype(np.int32)
        self.sizes[lens == 0] = 1
        return entries

    def _compact(self, entries: np.ndarray) -> None:
        """Set entries, dense and bitmaps: the long rows go into bitmaps when that is smaller
        (see the class doc); the other rows are copied, in order, into an array of their own."""
        n, offsets = self.n, self.offsets
        big = np.flatnonzero(self.counts > max(_DENSE_MIN, n // 32))
        self.dense = np.full(len(self.keys), -1, dtype=np.int32)
        self.bitmaps = np.zeros((len(big), (n + 7) // 8), dtype=np.uint8)
        for row, k in enumerate(big.tolist()):
            member = np.zeros(n, dtype=bool)
            member[entries[offsets[k]:offsets[k + 1]]] = True
            self.bitmaps[row] = np.packbits(member, bitorder="little")
            self.dense[k] = row
        kept = np.concatenate(([0], np.cumsum(np.where(self.dense < 0, self.counts, 0)))).astype(np.int64)
        self.entries = np.empty(int(kept[-1]), dtype=np.int32)
        edges = [-1, *big.tolist(), len(self.keys)]  # runs of rows between dense ones
        for lo, hi in itertools.pairwise(edges):
            if lo + 1 < hi:
                self.entries[kept[lo + 1]:kept[hi]] = entries[offsets[lo + 1]:offsets[hi]]
        self.offsets = kept

    def find(self, grams: Iterable[str]) -> list[int]:
        """Row of each trigram (3-character strings), -1 for one that no entry has."""
        grams = list(grams)
        if not grams or not len(self.keys):
            return [-1] * len(grams)
        cps = np.array([ord(ch) for g in grams for ch in g], dtype=np.int64).reshape(len(grams), 3)
        rank = np.searchsorted(self.alphabet, cps)
        known = (rank < len(self.alphabet)) & (self.alphabet[np.minimum(rank, len(self.alphabet) - 1)] == cps)
        w = self.width
        key = ((rank[:, 0] + 1) << (2 * w)) | ((rank[:, 1] + 1) << w) | (rank[:, 2] + 1)
        row = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        found = known.all(axis=1) & (self.keys[row] == key)
        return np.where(found, row, -1).tolist()

    def row(self, k: int) -> np.ndarray:
        """The entries containing trigram row k, ascending ((m,) int32 or, from a bitmap, int64)."""
        d = int(self.dense[k])
        if d < 0:
            return self.entries[self.offsets[k]:self.offsets[k + 1]]
        return np.flatnonzero(np.unpackbits(self.bitmaps[d], count=self.n, bitorder="little"))

    def keep(self, cand: np.ndarray, k: int) -> np.ndarray:
        """The entries of `cand` ((m,) ascending) that contain trigram row k, ascending."""
        d = int(self.dense[k])
        if d >= 0:
            bitmap = self.bitmaps[d]
            return cand[((bitmap[cand >> 3] >> (cand & 7).astype(np.uint8)) & 1) == 1]
        post = self.entries[self.offsets[k]:self.offsets[k + 1]]
        at = np.minimum(np.searchsorted(post, cand), len(post) - 1)
        return cand[post[at] == cand]

    def nbytes(self) -> int:
        arrays = [self.keys, self.counts, self.offsets, self.entries, self.dense, self.bitmaps, self.alphabet]
        return sum(a.nbytes for a in arrays) + (self.sizes.nbytes if hasattr(self, "sizes") else 0)


# ------------------------------------------------------------------ the index


class NameIndex:
    """Trigram index over names (and optional ids) of a vocabulary; see the module doc.

    names, ids: the lists given (copied: the index must not see later changes).
    order (n,) int32: entries by weight rank (highest weight first, ties by index);
    rank_of (n,) int32: the inverse permutation."""

    def __init__(self, names: Sequence[str], ids: Sequence[str] | None = None, weights: np.ndarray | None = None, *,
                 sorted_names: SortedTexts | None = None) -> None:
        """names[i], ids[i]: entry i's name and id; weights: (n,) ranking weight, higher first.
        sorted_names: these names in lower() order (`SortedTexts.build`), when the caller has
        it (Vocabulary does): then the index does not sort them again."""
        self.names = list(names)
        self.ids = list(ids) if ids is not None else None
        n = len(self.names)
        if self.ids is not None and len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} names")
        weights = np.zeros(n) if weights is None else np.asarray(weights, dtype=np.float64)
        if weights.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), not {weights.shape}")
        self.order = np.lexsort((np.arange(n), -weights)).astype(np.int32)
        self.rank_of = np.empty(n, dtype=np.int32)
        self.rank_of[self.order] = np.arange(n, dtype=np.int32)
        self._name_postings = _Postings(self.names)
        enc = self._name_postings.encoded
        del self._name_postings.encoded
        # Names sorted for prefix and exact lookups; ties (equal names) by weight, though any
        # order would do: the tiers rank what they find.
        if sorted_names is not None and sorted_names.plain and len(sorted_names.perm) == n:
            perm = sorted_names.perm
        else:
            perm = _sort_texts(enc.ranks, enc.starts, enc.lens, self.order)
        self._sorted_names = SortedTexts(self.names, perm, str.lower, True)
        self._blank_free = not len(enc.blank_ended())  # then the order is also the strip().lower() one
        del enc
        self._id_postings: _Postings | None = None
        self._sorted_ids: SortedTexts | None = None
        if self.ids is not None:
            self._id_postings = _Postings(self.ids)
            enc = self._id_postings.encoded
            del self._id_postings.encoded, self._id_postings.sizes  # sizes: for close(), on names only
            # ids sorted with the heaviest entry first among equal (lower-cased) ids: it wins
            self._sorted_ids = SortedTexts(self.ids, _sort_texts(enc.ranks, enc.starts, enc.lens, self.order), str.lower, True)
            del enc
        release_free_memory()

    def __len__(self) -> int:
        return len(self.names)

    def names_by_key(self) -> SortedTexts | None:
        """The names in name_key order (strip().lower()), ties by weight, when it is the order
        the index has (no name has surrounding blanks); None otherwise. For Vocabulary's
        exact-name lookups, which then need not sort the names again."""
        if not self._blank_free:
            return None
        return SortedTexts(self.names, self._sorted_names.perm, _strip_lower, True)

    def nbytes(self) -> int:
        """Bytes held in arrays (not counting the name and id lists)."""
        parts = [self._name_postings.nbytes(), self.order.nbytes, self.rank_of.nbytes, self._sorted_names.perm.nbytes]
        if self._id_postings is not None and self._sorted_ids is not None:
            parts += [self._id_postings.nbytes(), self._sorted_ids.perm.nbytes]
        return sum(parts)

    # -------------------------------------------------------------- suggestions

    def close(self, query: str, n: int = 5, cutoff: float = CUTOFF) -> list[int]:
        """Up to n entries whose name looks like `query`, best first (difflib ratio >= cutoff)."""
        q = query.strip().lower()
        if not q or not self.names:
            return []
        q_grams = _grams(q)
        post = self._name_postings
        # the set's own order, then a stable sort by length: the same reading order as the
        # reference implementation had (it matters when the budget cuts among equal lengths)
        listed = list(q_grams)
        rows = [k for k in post.find(listed) if k >= 0]
        rows.sort(key=lambda k: post.counts[k])
        picked, budget = [], MAX_POSTINGS
        for k in rows:  # rarest first: they say the most and cost the least
            size = int(post.counts[k])
            if size > budget:
                continue
            picked.append(post.row(k))  # no bitmap is this short (unless _DENSE_MIN is lowered)
            budget -= size
        if not picked:
            return []
        cand, votes = np.unique(np.concatenate(picked), return_counts=True)
        # Jaccard similarity of the trigram sets (over the trigrams read), so long names that
        # share many trigrams do not crowd out short close ones.
        jaccard = votes / (len(q_grams) + post.sizes[cand].astype(np.int64) - votes)
        top = cand[_top(jaccard, RERANK)]
        matcher = difflib.SequenceMatcher()
        matcher.set_seq2(q)
        scored = []
        lower = {}
        for i in top.tolist():
            lower[i] = low = self.names[i].lower()
            matcher.set_seq1(low)
            if matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff:
                r = matcher.ratio()
                if r >= cutoff:
                    scored.append((-r, int(self.rank_of[i]), i))
        scored.sort()
        out, seen = [], set()
        for _, _, i in scored:  # one suggestion per distinct name
            if lower[i] not in seen:
                seen.add(lower[i])
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
        hits = set(self._sorted_names.equal(q).tolist())
        if self._sorted_ids is not None:
            same = self._sorted_ids.equal(q)
            if len(same):
                hits.add(int(same[0]))  # the heaviest entry with that id
        return hits

    def _tier_prefix(self, q: str, taken: set[int], limit: int) -> list[int]:
        ids = self._sorted_names.starting(q)
        if len(ids) == 0:
            return []
        ranks = self.rank_of[ids]
        want = min(len(ids), limit + len(taken))
        part = np.argpartition(ranks, want - 1)[:want] if want < len(ids) else np.arange(len(ids))
        best = ids[part[np.argsort(ranks[part])]]
        return [int(i) for i in best if int(i) not in taken][:limit]

    @staticmethod
    def _candidates(q: str, postings: _Postings) -> np.ndarray | None:
        """Entries that contain every inner trigram of q (a superset of those containing q);
        None when q is too short to have one (the caller then scans in weight order)."""
        inner = {q[i:i + 3] for i in range(len(q) - 2)}
        if not inner:
            return None
        rows = postings.find(inner)
        if min(rows) < 0:
            return np.empty(0, dtype=np.int64)
        rows.sort(key=lambda k: postings.counts[k])  # the shortest list first: the rest filter it
        cand = postings.row(rows[0]).astype(np.int64)
        for k in rows[1:]:
            if len(cand) == 0:
                break
            cand = postings.keep(cand, k)
        return cand

    def _tier_substring(self, q: str, taken: set[int], limit: int) -> list[int]:
        pools = [self._candidates(q, self._name_postings)]
        if self._id_postings is not None:
            pools.append(self._candidates(q, self._id_postings))
        if any(p is None for p in pools):  # 1-2 characters: walk entries in weight order
            ordered = self.order[:MAX_VERIFY]
        else:
            cand = pools[0] if len(pools) == 1 else _union(pools[0], pools[1])
            ranks = self.rank_of[cand]
            if len(cand) > MAX_VERIFY:  # only the MAX_VERIFY heaviest are checked (ranks are distinct)
                part = np.argpartition(ranks, MAX_VERIFY - 1)[:MAX_VERIFY]
                cand, ranks = cand[part], ranks[part]
            ordered = cand[np.argsort(ranks)]
        names, ids = self.names, self.ids
        out = []
        for i in ordered.tolist():
            if i in taken:
                continue
            if q in names[i].lower() or (ids is not None and q in ids[i].lower()):
                out.append(i)
                if len(out) == limit:
                    break
        return out


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest of (m,) `scores`, highest first, ties by index: what
    np.argsort(-scores, kind="stable")[:k] gives, without sorting all m (up to MAX_POSTINGS)."""
    neg = -scores
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if len(neg) > k:
        kth = np.partition(neg, k - 1)[k - 1]
        better = np.flatnonzero(neg < kth)
        sel = np.concatenate((better, np.flatnonzero(neg == kth)[:k - len(better)]))  # both ascending
        sel.sort()
        return sel[np.argsort(neg[sel], kind="stable")]
    return np.argsort(neg, kind="stable")


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted union of two sorted arrays of distinct entries. By sorting: np.union1d's hashing
    took 0.6 s for two lists of a million entries."""
    c = np.concatenate((a, b))
    c.sort()
    return c[np.concatenate(([True], c[1:] != c[:-1]))] if len(c) else c


def close_matches(name: str, known: Sequence[str], n: int = 5) -> list[str]:
    """Up to n entries of `known` that look like `name` (case-insensitive), best first: the
    suggestion rule for small vocabularies (datasets, modalities, relations), the same as
    `NameIndex.close` on a large one."""
    known = list(known)
    return [known[i] for i in NameIndex(known).close(name, n=n)]


__all__ = ["NameIndex", "SortedTexts", "close_matches"]
