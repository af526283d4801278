"""The prediction engine: retrieve candidates with FAISS, rescore them exactly, filter, explain.

Knows nothing of HTTP (the app only maps requests to these calls). Three parts, each readable
alone: `Predictor` (this module: retrieval and exact rescoring, explanations, probabilities),
`service.names.NameResolver` (ids and names -> queries, and back), and
`service.added.AddedEntities` (entities added without retraining, and the `View` of the tables).

Start-up (`Predictor.load`): load and verify the bundle -> eval mode -> precompute every
branch's entity table C_b (and the fused one) -> load the bundle's FAISS index when its model
fingerprint matches, or build one -> ready.

A query (e, r', k, filter):
    q_b = BN1_b(BN0_b(C_b[e]) M_b(r'))                  every branch, (1, d); M_b(r') and
                                                        w(r') precomputed (FrozenIMF)
    I   = union of each branch's top candidates for     candidates (K' shared among the
          q_b in its own index part                     branches, + #known answers)
    p   = sum_b w_b P_b(q_b . C_b[I])                   exact decision-fusion rescoring
          (P_b: softmax over the entities, or sigmoid for BCE-trained bundles; the softmax
          normaliser exact up to EXHAUSTIVE_MAX_ENTITIES, estimated above)
    known answers removed (or flagged), sorted by p, top k

Searching K' plus the number of known answers means filtering can never leave fewer than k
results while candidates remain; with K' >= N every entity is scored, without retrieval.
Added entities are always candidates, scored exactly. `retrieval`, part of every cache key,
names the settings an answer depends on and the added set's generation.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model.bundle.format import Bundle, load_bundle, manifest_config, read_manifest
from model.evaluation.predict import Ranked, known_mask, top_k_with_filter
from model.kg.names import release_free_memory
from model.kg.triples import query_relation
from model.network.imf import IMF
from model.network.serving import CHUNK, FrozenIMF, all_logits, serving_tables
from service.added import AddedEntities, View
from service.index import DEFAULT_CANDIDATES, DEFAULT_NPROBE, DEFAULT_REFINE_FACTOR, EXACT, EXHAUSTIVE_MAX_ENTITIES, INDEX_DIR, CandidateIndex, resolve_kind
from service import tables as stored_tables
from service.names import NameResolver
from service.query import Query

log = logging.getLogger(__name__)

# Memory for the float64 probabilities of one chunk of exhaustively scored queries (no index).
EXHAUSTIVE_CHUNK_BYTES = 64 * 2**20
# Entities sampled for the softmax normaliser's tail above EXHAUSTIVE_MAX_ENTITIES (`Predictor._log_normalizers`).
NORMALISER_SAMPLE = 4096
# A search's extra depth for a query's known answers is rounded up to a multiple of this.
KNOWN_STEP = 256
# Members of each IVF list sampled once for the normaliser estimate (`Strata`).
STRATUM_SAMPLE = 8


@dataclass(frozen=True)
class Head:
    """What one branch's search found for one query: the entities it re-ranked exactly (M,),
    their exact logits (M,), and the IVF lists it visited (nprobe,) (None without lists)."""

    ids: np.ndarray
    logits: Tensor
    probed: np.ndarray | None


@dataclass(frozen=True)
class Strata:
    """One branch's IVF lists as strata of its normaliser estimate: the list of every bundle
    entity (N,) int32, the size of each list (nlist,), a fixed sample of STRATUM_SAMPLE members
    of each list (nlist, m) (-1 padded) and their rows (nlist, m, d) in the tables' type (zeros
    where padded)."""

    list_of: np.ndarray
    sizes: np.ndarray
    sample: np.ndarray
    rows: Tensor
    uniform_lists: np.ndarray  # the list of each member of the engine's uniform sample (S,)


def _among(values: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """np.isin(values, sorted_unique) for a sorted array without repeats (np.unique's output):
    a binary search each, cheaper than isin's hashing for the few thousand values here."""
    if len(sorted_unique) == 0:
        return np.zeros(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_unique, values), len(sorted_unique) - 1)
    return sorted_unique[at] == values


def _lse(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    """log(sum(exp(x))) over `axis` (all of x when None), float64, stable; -inf where every
    entry is -inf (or there are none). The normaliser's per-query arithmetic runs on a few
    thousand numbers at a time, where numpy's calls cost a fraction of torch's."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.float64(-math.inf) if axis is None else np.full(x.shape[:axis] + x.shape[axis + 1:], -math.inf)
    m = x.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m
    return out.reshape(()) if axis is None else out.squeeze(axis)


def _stratum_estimate(st: Strata, probed: np.ndarray, in_head: np.ndarray, head: np.ndarray, q: Tensor) -> float:
    """log of the estimated sum of exp(s) over the visited lists' entities outside the head:
    per list, (members outside the head) x the mean of exp(s) over its sampled members outside
    the head. A list whose sampled members are all in the head (rare) counts the rest of its
    members at the lowest sampled logit (they ranked below those). q: (d,); -inf when empty."""
    members = st.sample[probed]  # (P, m)
    rows = st.rows.index_select(0, torch.from_numpy(probed))  # (P, m, d)
    s = (rows.view(-1, rows.shape[-1]).float() @ q).view(rows.shape[:2]).double().numpy()  # (P, m)
    taken = members >= 0
    counted = taken & ~_among(members, head)
    rest = (st.sizes[probed] - in_head[probed]).astype(np.float64)  # (P,)
    n_counted = counted.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # lists with nothing counted: -inf - -inf, replaced below
        mean = _lse(np.where(counted, s, -math.inf), 1) - np.log(n_counted)
        low = np.where(taken, s, math.inf).min(axis=1)
        per_list = np.where(n_counted > 0, mean, low) + np.log(rest)
    return float(_lse(per_list[(rest > 0) & taken.any(axis=1)]))


def _rows(table: Tensor, ids: Tensor) -> Tensor:
    """table[ids] for a table (N, d) and ids (M,) int64: (M, d). index_select, because on this
    path (a few thousand rows of a million-row float16 table) torch's advanced indexing took
    about 6x as long for the same rows (0.75 vs 0.13 ms for 2,048 rows, one thread)."""
    return table.index_select(0, ids)


def _bucket(depth: int) -> int:
    """The next power of two >= depth (search depths in few distinct sizes)."""
    return 1 << max(0, int(depth) - 1).bit_length()


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of candidate ids of unequal length as one (B, M) array padded with -1."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for j, r in enumerate(rows):
        out[j, : len(r)] = r
    return out


@dataclass
class Explained(Ranked):
    """A ranked answer with each branch's probability, contribution and rank (`Predictor.explain`)."""

    branches: dict[str, dict[str, float]] = field(default_factory=dict)


class Predictor:
    """Loaded model + tables + index; thread-safe for concurrent reads (additions swap a view)."""

    def __init__(
        self, bundle: Bundle, index: CandidateIndex | None, tables: dict[str, Tensor], *, candidates: int, load_seconds: float
    ) -> None:
        """index None: no retrieval, every query scores all entities exactly. tables: every
        branch's (N, d) entity table."""
        self.bundle = bundle
        self.model: IMF = bundle.model
        self.index = index
        self.base_tables = tables
        self.candidates = candidates
        self.load_seconds = load_seconds
        self.branches = self.model.branches
        self.num_base = bundle.num_entities  # entities of the bundle (the FAISS index holds these)
        self.num_relations = bundle.num_relations
        self.index_kind = EXACT if index is None else index.kind
        self.frozen = FrozenIMF(self.model)  # what no query changes: relation matrices, w(r)
        self.added = AddedEntities(bundle, tables)
        self.names = NameResolver(bundle.vocab, self.added)

    @property
    def view(self) -> View:
        """The current tables and added entities (swapped whole by an addition)."""
        return self.added.view

    @property
    def tables(self) -> dict[str, Tensor]:
        return self.added.view.tables

    @property
    def num_entities(self) -> int:
        """Entities answers are drawn from: the bundle's and the added ones."""
        return self.added.view.size

    @property
    def retrieval(self) -> str:
        """What an answer depends on besides the model, for cache keys: "exact", or the index
        type with K', nprobe and the refinement factor; the extras (calibration, feature map)
        and the generation of added entities (an added entity can enter any answer)."""
        extras = self.bundle.extras_fingerprint[:8]
        base = EXACT if self.index is None else f"{self.index.kind}-c{self.candidates}-p{self.index.nprobe}-r{self.index.refine_factor}"
        dtype = self.base_tables[self.branches[0]].dtype
        stored = "" if dtype == torch.float32 else f"-{stored_tables.dtype_name(dtype)}"  # float16 tables round each number
        return f"{base}{stored}-x{extras}-g{self.added.view.generation}"

    # ------------------------------------------------------------------ start-up

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        candidates: int = DEFAULT_CANDIDATES,
        index_kind: str = "auto",
        nprobe: int = DEFAULT_NPROBE,
        refine_factor: int = DEFAULT_REFINE_FACTOR,
        save_index: bool = True,
        table_dtype: str = "auto",
    ) -> Predictor:
        """table_dtype: how the entity tables are stored (service.tables.resolve_dtype)."""
        t0 = time.monotonic()
        path = Path(path)
        manifest = read_manifest(path)
        cfg = manifest_config(path, manifest)
        n = cfg.num_entities
        kind = resolve_kind(index_kind, n)
        dtype = stored_tables.resolve_dtype(table_dtype, n)
        folder = path / INDEX_DIR
        shape = (n, cfg.dim)
        # With an index, the tables computed at the first start are saved beside it and read back
        # at later ones (service.tables): computing them is most of a start at a million entities.
        # Then the model's own entity rows are not even read (1.5 GB at a million entities, which
        # with the tables made a start's peak nearly twice its steady memory).
        saved = stored_tables.find(folder, manifest["model_fingerprint"], cfg.branches, shape, dtype) if kind != EXACT else None
        bundle = load_bundle(path, entity_rows=saved is None)
        model = bundle.model
        tables = stored_tables.load(folder, saved) if saved is not None else None
        if saved is not None and tables is None:  # the saved tables did not check out: compute them after all
            bundle = load_bundle(path)
            model = bundle.model
        computed = tables is None
        if tables is None:
            tables = serving_tables(model, dtype)
        if dtype != torch.float32 or not computed:
            # The tables are not the model's own tensors: its per-entity rows are never read again.
            freed = model.release_entity_rows()
            log.info("entity tables in %s (%d MiB, %s); the model's own entity rows %s",
                     stored_tables.dtype_name(dtype), sum(t.numel() * t.element_size() for t in tables.values()) // 2**20,
                     "computed" if computed else "saved ones read", f"released ({freed // 2**20} MiB)" if freed else "not loaded")
        index = None
        widths = [int(tables[b].shape[1]) for b in model.branches]  # one index part per branch table
        if kind != EXACT:
            index = CandidateIndex.load(folder, kind, bundle.fingerprint, widths, n, nprobe=nprobe, refine_factor=refine_factor)
        if kind == EXACT:
            log.info("no index: every query scores all %d entities with the full model", n)
        elif index is None:
            index = CandidateIndex.build([tables[b].float().numpy() for b in model.branches], kind, nprobe=nprobe, refine_factor=refine_factor)
            if save_index:
                try:
                    index.save(folder, bundle.fingerprint)
                except OSError as exc:  # a read-only mount is fine: build again next start
                    log.info("index not saved (%s); it will be rebuilt at the next start", exc)
        else:
            log.info("loaded saved %s index for model %s", kind, bundle.fingerprint[:12])
        if kind != EXACT and computed and save_index:
            try:
                stored_tables.save(folder, bundle.fingerprint, tables)
            except OSError as exc:
                log.info("entity tables not saved (%s); they will be computed at the next start", exc)
        bundle.known  # build the known-answer index now, not on the first request  # noqa: B018
        bundle.vocab.name_index  # and the name index (suggestions, /entities)  # noqa: B018
        bundle.vocab.entities_named("")  # and the exact-name maps (every name a request gives)
        seconds = time.monotonic() - t0
        # Not "ready": the service may still open the entity store and load the text encoder
        # (service.lifespan logs "ready" when /ready answers 200).
        log.info("engine loaded: %d entities, branches %s, %s index, %.1fs", n, bundle.model.branches, kind, seconds)
        predictor = cls(bundle, index, tables, candidates=candidates, load_seconds=seconds)
        if index is not None and n > EXHAUSTIVE_MAX_ENTITIES and model.cfg.output == "softmax":
            predictor._tail_sample()  # the normaliser estimate's samples, now rather than on the first request
            predictor._strata()
        release_free_memory()  # what the start's temporaries left in the heap (tens of MB at 1M)
        return predictor

    # ------------------------------------------------------------------ scoring

    def _rel(self, q: Query) -> int:
        return query_relation(q.relation, q.direction, self.num_relations)

    @torch.no_grad()
    def _queries(self, entities: list[int], rels: list[int], tables: dict[str, Tensor] | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """q_b for a batch: (B, d) each, and w(r): (B, nb), from the precomputed relation
        matrices and weights (`FrozenIMF`)."""
        e = torch.tensor(entities, dtype=torch.long)
        r = torch.tensor(rels, dtype=torch.long)
        q = self.frozen.query_vectors(e, r, self.tables if tables is None else tables)
        return q, self.frozen.decision_weights(r)

    def _known_rows(self, q: Query) -> np.ndarray:
        if q.entity >= self.num_base:  # an added entity has no known facts
            return np.empty(0, dtype=np.int64)
        return self.bundle.known.answers_of(q.entity, self._rel(q))

    @torch.no_grad()
    def candidates_for(self, queries: list[Query], qv: dict[str, Tensor], w: Tensor, known: list[np.ndarray], total: int | None = None) -> np.ndarray:
        """Candidate entity ids per query: (B, M), padded with -1 (see `_retrieve`)."""
        return self._retrieve(queries, qv, known, total)[0]

    @torch.no_grad()
    def _retrieve(self, queries: list[Query], qv: dict[str, Tensor], known: list[np.ndarray], total: int | None = None) -> tuple[np.ndarray, list[dict[str, Head]]]:
        """Candidates per query: the union of each branch's own top entities, (B, M) padded with
        -1; and, per query and branch, every entity that branch's search scored exactly, with
        its exact logit, and the IVF lists it visited (`Head`, for `_log_normalizers`).

        The index has one part per branch table, searched with that branch's q_b alone: the
        fused p = sum_b w_b P_b(t) is a mixture, so an entity in its top k is near the top of
        at least one branch (bench/serve_bench.py measures the recall). K' is shared among the
        branches; each search goes at least k deep plus the query's known answers when they
        will be filtered, so filtering never leaves fewer than k results while candidates
        remain. Over PQ codes a search goes refine_factor times deeper for the k (the known
        answers need no margin) and the branch's own table re-ranks it exactly (no float copy
        of the vectors in the index). Added entities are always candidates.
        """
        index = self.index
        assert index is not None
        n, nb = self.num_base, len(self.branches)
        if len(index.parts) != nb:
            raise ValueError(f"the index has {len(index.parts)} parts for {nb} branches: build it with one part per branch table")
        added = np.arange(n, total or self.num_entities, dtype=np.int64)
        share = -(-self.candidates // nb)
        # Each query's depth depends on that query alone (its k and its number of known
        # answers), rounded up to a power of two so a batch needs few FAISS calls: the answer to
        # a query is the same whatever batch it came in (and may be cached as such).
        extra = [len(kn) if q.filter_known else 0 for q, kn in zip(queries, known)]
        depths = [min(n, _bucket(max(share, q.k)) + x) for q, x in zip(queries, extra)]  # exact candidates kept per branch
        # How deep each search goes: the refinement margin (PQ codes) for the candidates, plus
        # the known answers (rounded up to KNOWN_STEP, so a batch needs few FAISS calls), which
        # filtering may remove but which need no margin of their own: a popular entity with
        # hundreds of known answers would otherwise re-rank refine_factor times as many rows.
        searched = [min(n, index.depth(_bucket(max(share, q.k))) + -(-x // KNOWN_STEP) * KNOWN_STEP) for q, x in zip(queries, extra)]
        base = self.base_tables
        heads: list[dict[str, Head]] = [{} for _ in queries]
        tops: list[list[np.ndarray]] = [[] for _ in queries]
        for part, b in enumerate(self.branches):
            q_b = qv[b]
            found, probed = self._search_by_depth(part, q_b.numpy(), searched)  # probed: the lists visited, for the normaliser's strata
            for j, ids in enumerate(found):
                ids = ids[ids >= 0]
                s = _rows(base[b], torch.from_numpy(ids)).float() @ q_b[j]  # exact logits of what the search found (float32 from any stored type)
                if len(ids) > depths[j]:
                    keep = torch.topk(s, depths[j], sorted=False).indices.numpy()
                    tops[j].append(ids[keep])
                else:
                    tops[j].append(ids)
                heads[j][b] = Head(ids, s, None if probed[j] is None else probed[j][probed[j] >= 0])
        rows = [np.unique(np.concatenate([*t, added])) for t in tops]
        return _pad(rows), heads

    def _search_by_depth(self, part: int, xq: np.ndarray, depths: list[int]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """Search each row of xq in one part of the index to its own depth: one FAISS call per
        distinct depth. Per row: the ids found, and the IVF lists visited (None without lists)."""
        assert self.index is not None
        out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(depths)
        visited: list[np.ndarray | None] = [None] * len(depths)
        by_depth: dict[int, list[int]] = {}
        for i, dep in enumerate(depths):
            by_depth.setdefault(dep, []).append(i)
        for dep, rows in by_depth.items():
            _, ids, lists = self.index.search_part(part, xq[rows] if len(rows) < len(depths) else xq, dep)
            for j, i in enumerate(rows):
                out[i] = ids[j]
                visited[i] = None if lists is None else lists[j]
        return out, visited

    def _tail_sample(self) -> tuple[np.ndarray, np.ndarray, dict[str, Tensor]]:
        """A fixed uniform sample of the bundle's entities for the normaliser's tail: ids (S,),
        the position of every entity in it (N,) (-1 = not sampled), and each branch's sampled
        rows as a contiguous (d, S) table. Drawn once (seeded: answers do not depend on when)."""
        cached = getattr(self, "_sample", None)
        if cached is None:
            n = self.num_base
            size = min(n, NORMALISER_SAMPLE)
            ids = np.sort(np.random.default_rng(0).choice(n, size=size, replace=False))
            pos = np.full(n, -1, dtype=np.int32)
            pos[ids] = np.arange(size)
            cols = {b: self.base_tables[b][torch.from_numpy(ids)].float().T.contiguous() for b in self.branches}
            cached = self._sample = (ids, pos, cols)
        return cached

    def _strata(self) -> dict[str, Strata] | None:
        """Each branch's IVF lists as strata of the normaliser estimate (`Strata`), None without
        IVF lists. Built once (seeded)."""
        cached = getattr(self, "_strata_cache", None)
        if cached is None and self.index is not None and self.index.has_lists:
            rng = np.random.default_rng(1)
            cached = {}
            for part, b in enumerate(self.branches):
                members = self.index.lists(part)
                list_of = np.full(self.num_base, -1, dtype=np.int32)
                sample = np.full((len(members), STRATUM_SAMPLE), -1, dtype=np.int64)
                for i, ids in enumerate(members):
                    list_of[ids] = i
                    pick = ids if len(ids) <= STRATUM_SAMPLE else rng.choice(ids, STRATUM_SAMPLE, replace=False)
                    sample[i, : len(pick)] = pick
                rows = self.base_tables[b][torch.from_numpy(np.maximum(sample, 0).ravel())].view(*sample.shape, -1).clone()
                rows[torch.from_numpy(sample < 0)] = 0.0  # in the tables' own type: float16 halves them (65 MiB at 1M), their logits are float32
                cached[b] = Strata(list_of, np.array([len(m) for m in members], dtype=np.int64), sample, rows.contiguous(), list_of[self._tail_sample()[0]])
            self._strata_cache = cached
        return cached

    @torch.no_grad()
    def _log_normalizers(self, qv: dict[str, Tensor], ids: np.ndarray, valid: np.ndarray, logits: dict[str, Tensor], heads: list[dict[str, Head]]) -> dict[str, Tensor]:
        """Each branch's softmax normaliser Z_b = sum_t exp(s_b(t)) over all entities, in log,
        estimated above EXHAUSTIVE_MAX_ENTITIES entities, (B,) float64 per branch.

        Exact over the head: every entity whose logit is known (what the branch's search
        re-ranked, and the candidates). The rest is estimated, stratified by the branch's IVF
        lists (docs/scaling.md section 3): in each list the search visited (where the mass
        is), its entities outside the head times the mean of exp(s) over that list's fixed
        sample of STRATUM_SAMPLE members outside the head; in the lists not visited, their
        entities outside the head times the mean over the fixed uniform sample's members
        there. Each part is unbiased for its stratum. Without IVF lists (flat, HNSW indexes)
        the rest is (N / S) x the sum over the uniform sample outside the head. The
        candidates' own sum alone inflates the probabilities of branches whose mass is spread
        wide."""
        sample, pos, cols = self._tail_sample()
        strata = self._strata()
        n = self.num_base
        out: dict[str, Tensor] = {}
        for b in self.branches:
            tail_logits = (qv[b] @ cols[b]).double().numpy()  # (B, S)
            cand_logits = logits[b].double().numpy()  # (B, M)
            norms = np.empty(len(ids))
            for j in range(len(ids)):
                h = heads[j][b]
                # Every entity whose exact logit is known, once: what the search re-ranked and
                # the candidates (added entities among them: they are in no list and no sample).
                seen, first = np.unique(np.concatenate([h.ids, ids[j][valid[j]]]), return_index=True)
                s_seen = np.concatenate([h.logits.double().numpy(), cand_logits[j][valid[j]]])[first]
                parts = [_lse(s_seen)]
                seen = seen[seen < n]
                outside = np.ones(len(sample), dtype=bool)  # uniform sample members outside the head
                at = pos[seen]
                outside[at[at >= 0]] = False
                if strata is None or h.probed is None:
                    rest, count = n - len(seen), int(outside.sum())
                else:
                    st = strata[b]
                    visited = np.zeros(len(st.sizes), dtype=bool)
                    visited[h.probed] = True
                    in_head = np.bincount(st.list_of[seen], minlength=len(st.sizes))  # head entities per list
                    parts.append(_stratum_estimate(st, h.probed, in_head, seen, qv[b][j]))
                    # The lists not visited: the uniform sample's members there.
                    outside &= ~visited[st.uniform_lists]
                    rest, count = int((st.sizes - in_head)[~visited].sum()), int(outside.sum())
                if rest > 0 and count > 0:
                    parts.append(_lse(tail_logits[j][outside]) + math.log(rest / count))
                norms[j] = _lse(np.array(parts))
            out[b] = torch.from_numpy(norms)
        return out

    @torch.no_grad()
    def predict_many(self, queries: list[Query]) -> list[list[Ranked]]:
        """Retrieve-then-rescore for a batch of queries, scored together (exhaustively, in
        bounded chunks, when there is no index)."""
        if not queries:
            return []
        view = self.added.view  # one view for the whole batch, whatever is added meanwhile
        tables = view.tables
        rels = [self._rel(q) for q in queries]
        qv, w = self._queries([q.entity for q in queries], rels, tables)
        known = [self._known_rows(q) for q in queries]
        if self.index is None or self.candidates >= self.num_base:  # K' covers everything: score it all
            return self._exhaustive(queries, qv, w, known, view)
        ids, heads = self._retrieve(queries, qv, known, len(tables[self.branches[0]]))  # (B, M), -1 padded
        valid = ids >= 0
        cand = torch.from_numpy(np.where(valid, ids, 0))
        logits = {b: torch.einsum("bd,bkd->bk", qv[b], _rows(tables[b], cand.view(-1)).view(*cand.shape, -1).float()) for b in self.branches}  # (B, M) exact, float32
        log_norm = None
        if self.model.cfg.output == "softmax":
            # Softmax branches need each branch's normaliser over all N entities: exact up to
            # EXHAUSTIVE_MAX_ENTITIES entities (the cost of one exhaustive scoring pass),
            # estimated above (`_log_normalizers`).
            if self.num_entities <= EXHAUSTIVE_MAX_ENTITIES:
                log_norm = self.frozen.log_normalizers(qv, view.columns)
            else:
                log_norm = self._log_normalizers(qv, ids, valid, logits, heads)
        p = self.model.fuse(logits, w, log_norm).numpy()  # (B, M) exact fused probabilities
        out = []
        for i, q in enumerate(queries):
            ci = ids[i][valid[i]]
            is_known = np.isin(ci, known[i], assume_unique=True)
            top = top_k_with_filter(p[i][valid[i]], is_known, q.k, filter_known=q.filter_known, ids=ci)
            out.append([Ranked(int(ci[t.entity]), t.score, t.rank, t.known) for t in top])
        return out

    def _exhaustive(self, queries: list[Query], qv: dict[str, Tensor], w: Tensor, known: list[np.ndarray], view: View) -> list[list[Ranked]]:
        """Score every entity for each query, a few queries at a time: the float64 (rows, N)
        probabilities of every branch exist for one chunk only, so a request's peak extra
        memory stays near EXHAUSTIVE_CHUNK_BYTES whatever its batch size."""
        n, nb = view.size, len(self.branches)
        rows = max(1, EXHAUSTIVE_CHUNK_BYTES // (8 * n * (nb + 2)))  # nb branch terms + the sum + logits
        columns = view.columns
        out: list[list[Ranked]] = []
        for start in range(0, len(queries), rows):
            sl = slice(start, start + rows)
            p = self.frozen.score_all({b: v[sl] for b, v in qv.items()}, w[sl], columns).numpy()  # (rows, N)
            for i, q in enumerate(queries[sl]):
                out.append(top_k_with_filter(p[i], known_mask(known[start + i], n), q.k, filter_known=q.filter_known))
        return out

    def predict(self, q: Query) -> list[Ranked]:
        return self.predict_many([q])[0]

    @torch.no_grad()
    def predict_exhaustive(self, q: Query) -> list[Ranked]:
        """Score every entity with the full model, index or not (the fast exhaustive path)."""
        view = self.added.view
        qv, w = self._queries([q.entity], [self._rel(q)], view.tables)
        return self._exhaustive([q], qv, w, [self._known_rows(q)], view)[0]

    @torch.no_grad()
    def predict_reference(self, q: Query) -> list[Ranked]:
        """The slow, obviously correct answer every fast path is checked against: the model's
        own eval-mode scoring of every entity (IMF.query_vectors and IMF.rescore on the (N, d)
        tables: nothing precomputed, no other layout), ranked by the same rule."""
        tables = self.added.view.tables
        r = torch.tensor([self._rel(q)])
        qv = self.model.query_vectors(torch.tensor([0]), r, {b: t[q.entity:q.entity + 1].float() for b, t in tables.items()})
        w = self.model.decision_weights(r)
        log_norm = self.model.log_normalizers(qv, tables) if self.model.cfg.output == "softmax" else None
        # CHUNK entities at a time, as float32 whatever the tables are stored as.
        p = torch.cat([self.model.rescore(qv, w, {b: t[s:s + CHUNK].float() for b, t in tables.items()}, None, log_norm=log_norm)[1]
                       for s in range(0, len(tables[self.branches[0]]), CHUNK)], dim=1)[0].numpy()
        return top_k_with_filter(p, known_mask(self._known_rows(q), len(p)), q.k, filter_known=q.filter_known)

    @torch.no_grad()
    def _rank_of(self, q: Query, entity: int) -> Ranked:
        """Where `entity` stands in q's answer over all entities: 1 + the number of entities
        that /predict would list before it (known answers other than it left out when
        q.filter_known; ties broken by entity id, as top_k_with_filter does)."""
        view = self.added.view
        qv, w = self._queries([q.entity], [self._rel(q)], view.tables)
        p = self.frozen.score_all(qv, w, view.columns)[0].numpy()  # as /predict scores it
        known = known_mask(self._known_rows(q), len(p))
        ahead = (p > p[entity]) | ((p == p[entity]) & (np.arange(len(p)) < entity))
        if q.filter_known:
            ahead &= ~known
        return Ranked(entity, float(p[entity]), 1 + int(ahead.sum()), bool(known[entity]))

    @torch.no_grad()
    def explain(self, q: Query, tail: int | None = None) -> tuple[dict[str, float], list[Explained]]:
        """Decision-fusion weights w(r) and, per candidate, each branch's probability,
        contribution (w_b * probability; they sum to the candidate's score) and rank (the
        candidate's raw rank among all entities by that branch's own score).

        Candidates: the /predict answer for q, or only `tail` when given (with its rank in the
        exhaustive answer to q, see `_rank_of`).
        """
        rel = self._rel(q)
        if tail is None:
            ranked = self.predict(q)
        else:
            ranked = [self._rank_of(q, tail)]
        cand = torch.tensor([[c.entity for c in ranked]], dtype=torch.long)
        view = self.added.view
        qv, w = self._queries([q.entity], [rel], view.tables)
        weights = {b: float(w[0, i]) for i, b in enumerate(self.branches)}
        out = []
        # Each branch's logits against all entities, once, for the per-branch ranks.
        columns = view.columns
        logits = {b: all_logits(qv[b], columns[b])[0] for b in self.branches}  # (N,)
        probs = self.model.branch_probabilities({b: v[None] for b, v in logits.items()})  # (1, N) each
        for j, c in enumerate(ranked):
            branches = {}
            total = 0.0
            for i, b in enumerate(self.branches):
                s = logits[b][cand[0, j]]
                prob = float(probs[b][0, cand[0, j]])
                contrib = weights[b] * prob
                total += contrib
                rank = 1 + int((logits[b] > s).sum())
                branches[b] = {"probability": prob, "contribution": contrib, "rank": rank}
            # The score reported is the sum of the contributions (equal to /predict's score up
            # to float rounding), so clients can check the decomposition exactly.
            out.append(Explained(c.entity, total, c.rank, c.known, branches))
        return weights, out

    # ------------------------------------------------------------------ probabilities

    def probabilities(self, q: Query, scores: list[float]) -> list[float | None]:
        """Calibrated probability that each (query, answer) triple holds (model.bundle.calibration),
        None for every score when the bundle has no calibration."""
        if self.bundle.calibration is None:
            return [None] * len(scores)
        return [float(x) for x in self.bundle.calibration.probability(np.asarray(scores, dtype=np.float64), self._rel(q))]
