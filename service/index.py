"""FAISS candidate retrieval: one index part per branch entity table.

What is indexed. The fused score p(t) = sum_b w_b(r) P_b(t | h, r) mixes each branch's
probability (a softmax over the entities for cross-entropy models, a sigmoid for BCE ones), so
an entity in the fused top k is near the top of at least one branch: P_b(t) >= p_k / (nb w_b)
for some b. Each branch's logit q_b . C_b[t] is one inner product, so the index has one part per
branch, over that branch's table C_b (N, d) (FAISS names: xb, xq, D, I, k), searched with q_b
alone; the engine rescores the union of the parts' answers with the full model, which restores
the exact order, and measures the cost of the approximation as candidate recall
(bench/serve_bench.py, docs/benchmarks.md). One part per branch costs one scan of d-wide codes
per branch, where searching one index over the concatenated tables with a query that fills
only one branch's block scans nb * d-wide codes each time. `build` also takes a single matrix
(one part), for callers that index one table.

Index types: "flat" (exact inner-product search), "ivf" (IVF-Flat), "ivfpq" (IVF with 4-bit PQ
codes scanned by FAISS's SIMD fast-scan kernels, for millions), "hnsw"; and "exact", no index at
all, which `auto` picks for small graphs (see `resolve_kind`). An IVF-PQ part keeps only its
codes: its search goes `refine_factor` times deeper than asked and the caller re-ranks those
candidates exactly from the entity tables it holds anyway (FAISS's own exact refinement,
IndexRefineFlat, would keep a second float32 copy of every table: 2 GB at 1M entities and
d = 128, four branches). A built index is saved beside the bundle (index/<kind>.faiss, the
parts' serializations back to back) with a sidecar (index/<kind>.json): the model fingerprint
it was built from, its shape, the sha256 of the index file and a MAC; it is reused only when all
of them check out, else rebuilt.

Why a MAC, and keyed by what. faiss.read_index is a C++ parser: bytes that reach it must be
bytes this service wrote. A sha256 in the sidecar only catches damage: whoever can write the
index folder (the service writes it at run time, IMF_SAVE_INDEX, so it is the one writable part
of an otherwise read-only, verified bundle; or a bundle arrives with an index/ folder from
elsewhere) writes the sidecar too, with the right checksum and the model fingerprint, which is
public (it is in the manifest). Nothing derived from the bundle alone can tell the two apart:
whoever can read the bundle can derive it too. So the sidecar carries an HMAC-SHA256 of the
sidecar's other fields and the index bytes, keyed by a secret of this installation:
`$XDG_STATE_HOME/imf/index.key` (default ~/.local/state/imf/index.key, outside every bundle),
32 random bytes created on the first save, mode 0600 in a 0700 folder, and used only while it is
owned by this user and neither it nor its folder is open to others. The fields it covers tie the
index to the verified weights (model_fingerprint) and to its shape. An index written by another
installation (another key, or none) is refused and rebuilt once here; an index whose key cannot
be kept (a read-only home, as in the compose stack) is not saved, like one on a read-only bundle.
The file is read into memory once, checked, and parsed from those same bytes
(faiss.deserialize_index), so it cannot change between the check and the parse (at the price of
a transient second copy of the index in memory while it loads).

Inner product to L2. The clustering (IVF) and graph (HNSW) indexes search badly with the
inner-product metric on vectors of unequal norms: a cell's centroid is a poor proxy for the inner
products of its members, so the right cells are not probed (docs/benchmarks.md measures the recall
lost on a 1M-entity bundle). They index the standard reduction instead (Bachrach et al.,
RecSys 2014): with M = max_t |xb[t]|,

    xb'[t] = [xb[t], sqrt(M^2 - |xb[t]|^2)]     xq' = [xq, 0]
    |xq' - xb'[t]|^2 = |xq|^2 + M^2 - 2 xq . xb[t]

so the nearest neighbours of xq' in L2 are exactly the largest inner products, and the L2
geometry is one the clustering handles well once the query is scaled onto the same sphere
(`search`; without that scaling recall was worse still). `search` returns inner products either
way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import stat
import time
from pathlib import Path

import faiss
import numpy as np


log = logging.getLogger(__name__)

INDEX_DIR = "index"
EXACT = "exact"  # no index: the full model scores every entity (exact by construction)

# The retrieval defaults (IMF_CANDIDATES, IMF_NPROBE, IMF_REFINE_FACTOR read them): one home.
DEFAULT_CANDIDATES = 200  # K': candidates retrieved, then rescored exactly
DEFAULT_NPROBE = 128  # IVF lists visited per search
DEFAULT_REFINE_FACTOR = 32  # IVF-PQ: codes re-ranked exactly (by the engine), as a multiple of the search depth
# The MAC's domain (changing it invalidates every saved index, which is then rebuilt) and key.
MAC_CONTEXT = b"imf-faiss-index-v2\0"
KEY_BYTES = 32


def key_path() -> Path:
    """Where this installation's index key lives: $XDG_STATE_HOME/imf/index.key, by default
    ~/.local/state/imf/index.key; never inside a bundle (see the module doc)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "imf" / "index.key"


def _private(path: Path, st: os.stat_result, *, secret: bool) -> str | None:
    """Why `path` cannot be trusted as this user's own (None when it can): owned by another user,
    or open to others (a secret must not be readable, nor anything replaceable by them)."""
    if st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}"
    if st.st_mode & (0o077 if secret else 0o022):
        return f"{path} has mode {stat.S_IMODE(st.st_mode):o}: open to others"
    return None


def installation_key(*, create: bool) -> tuple[bytes | None, str]:
    """(key, "") for this installation's index key, created first when `create`; (None, why)
    when there is none that can be trusted."""
    path = key_path()
    try:
        if create and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first: use theirs
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(KEY_BYTES))
                    f.flush()
                    os.fsync(f.fileno())
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            why = _private(path.parent, os.stat(path.parent), secret=False) or _private(path, os.fstat(f.fileno()), secret=True)
            key = f.read(KEY_BYTES + 1)
    except OSError as exc:
        return None, f"no index key at {path} ({exc})"
    if why:
        return None, why
    if len(key) != KEY_BYTES:
        return None, f"{path} is not a {KEY_BYTES}-byte key"
    return key, ""


def _mac(key: bytes, meta: dict, *data: bytes | bytearray | np.ndarray) -> str:
    """HMAC-SHA256 of the sidecar's fields (all but the MAC itself) and the data's bytes (in
    chunks, back to back)."""
    fields = json.dumps({k: v for k, v in meta.items() if k != "mac"}, sort_keys=True, separators=(",", ":")).encode()
    mac = hmac.new(key, MAC_CONTEXT + fields + b"\0", hashlib.sha256)
    for chunk in data:
        mac.update(chunk)  # not concatenated: no second copy of a gigabyte of tables
    return mac.hexdigest()


def save_authenticated(folder: Path, data_name: str, meta_name: str, chunks: list, meta: dict) -> None:
    """Write folder/data_name (the chunks back to back) and its sidecar folder/meta_name (meta,
    the data's sha256 and the MAC of both under this installation's key), each to a temporary
    name first, then renamed. OSError when it cannot be written, or when there is no installation
    key to authenticate it with (data nobody can verify is not worth writing)."""
    key, why = installation_key(create=True)
    if key is None:
        raise OSError(why)
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for c in chunks:
        digest.update(c)
    meta = {**meta, "sha256": digest.hexdigest()}  # damage, told apart from forgery in the log
    meta["mac"] = _mac(key, meta, *chunks)  # checked before anything parses the data
    tmp, meta_tmp = folder / f".{data_name}.tmp-{os.getpid()}", folder / f".{meta_name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)
        meta_tmp.write_text(json.dumps(meta))
        os.replace(tmp, folder / data_name)
        os.replace(meta_tmp, folder / meta_name)
    except BaseException:
        # A full disk or an interrupted write leaves nothing behind (a data file without its
        # new sidecar is refused by its MAC and rebuilt).
        tmp.unlink(missing_ok=True)
        meta_tmp.unlink(missing_ok=True)
        raise
    log.debug("saved %s", folder / data_name)


def read_meta(path: Path) -> dict | None:
    """A sidecar's fields, or None when it is missing or unreadable (logged)."""
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("ignoring unreadable %s", path)
        return None
    return meta if isinstance(meta, dict) else None


def load_authenticated(path: Path, meta: dict, what: str) -> bytearray | None:
    """The bytes of `path` when they are what this installation wrote with `meta` (the sidecar's
    fields, already checked by the caller for fitting this model): sha256 and MAC. None, with the
    reason logged, otherwise; `what` names the data in the log ("index", "tables"). The file is
    read once into memory: the bytes checked are the bytes the caller parses."""
    digest, mac = meta.get("sha256"), meta.get("mac")
    if not isinstance(digest, str) or not isinstance(mac, str):
        log.info("saved %s at %s has no checksum or MAC (older format); rebuilding", what, path)
        return None
    try:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            got = f.readinto(data)
    except OSError as exc:
        log.warning("cannot read %s (%s); rebuilding the %s", path, exc, what)
        return None
    key, why = installation_key(create=False)
    if got == len(data) and key is not None and hmac.compare_digest(_mac(key, meta, data), mac):
        return data  # the MAC covers the bytes: the checksum is only needed to explain a refusal
    # Never parsed. Damaged (the checksum fails too), or written under another key (another
    # installation) or forged, or no key to check it with.
    if got != len(data) or hashlib.sha256(data).hexdigest() != digest:
        log.warning("%s: checksum mismatch (tampered or truncated); refusing it and rebuilding the %s", path, what)
    elif key is None:
        log.warning("%s cannot be authenticated (%s); refusing it and rebuilding the %s", path, why, what)
    else:
        log.warning("%s: not written by this installation (MAC mismatch); refusing it and rebuilding the %s", path, what)
    return None


# Largest graph for which one exhaustive scoring pass per query is affordable on a CPU: `auto`
# scores every entity exactly below it (no index), and the retrieval path computes exact softmax
# normalisers up to it (above, the candidates' own sum stands in).
EXHAUSTIVE_MAX_ENTITIES = 200_000


def resolve_kind(kind: str, num_entities: int) -> str:
    """'auto' -> "exact" below EXHAUSTIVE_MAX_ENTITIES entities, "ivfpq" from there on.

    A flat index computes the same N dot products that exhaustive full-model scoring does (one
    search per branch), so below a few hundred
    thousand entities scoring everything exactly is both exact and faster (docs/benchmarks.md
    measures both). Sublinear indexes (IVF, PQ, HNSW) win at scale.
    """
    if kind != "auto":
        return kind
    return EXACT if num_entities < EXHAUSTIVE_MAX_ENTITIES else "ivfpq"


def factory_string(kind: str, num_entities: int, dim: int) -> str:
    """The FAISS index_factory description of an index type for N vectors of size dim (for the
    L2-reduced kinds, dim is the reduced width, a multiple of 4)."""
    if kind == "flat":
        return "Flat"
    nlist = _nlist(num_entities)
    if kind == "ivf":
        return f"IVF{nlist},Flat"
    if kind == "ivfpq":
        # 4-bit PQ codes, one per 2 dims (the same bytes as 8-bit codes per 4 dims), scanned with
        # FAISS's SIMD "fast scan" kernels; the caller's exact re-ranking of refine_factor x the
        # search depth makes up for their coarseness (docs/benchmarks.md section 5).
        return f"IVF{nlist},PQ{dim // 2}x4fs"
    if kind == "hnsw":
        return "HNSW32"
    raise ValueError(f"unknown index type {kind!r}")


def _nlist(num_entities: int) -> int:
    """IVF lists for N vectors: about 4 sqrt(N)."""
    return max(1, min(65536, int(4 * math.sqrt(num_entities))))


def _l2_reduced(kind: str) -> bool:
    """Whether `kind` indexes the inner-product-to-L2 reduction (see the module doc)."""
    return kind in ("ivf", "ivfpq", "hnsw")


def _index_dim(kind: str, dim: int) -> int:
    """Width of the vectors an index of `kind` stores for xb of width `dim`: the reduction's extra
    column, padded with zeros to a multiple of 4 so PQ can split it evenly."""
    return dim if not _l2_reduced(kind) else -(-(dim + 1) // 4) * 4


class CandidateIndex:
    """FAISS inner-product indexes over the column blocks of xb ("parts": one per branch table
    when the engine builds it, or one over the whole of xb), with the settings that query them.

    An IVF-PQ part holds only its PQ codes (no float copy of the vectors): its approximate
    search goes `refine_factor` times deeper than asked, and the caller re-ranks those
    candidates exactly from the tables it holds anyway (`search` does it itself when given the
    rows; the engine does it from its entity tables)."""

    def __init__(self, parts: faiss.Index | list[faiss.Index], kind: str, *, nprobe: int = DEFAULT_NPROBE, refine_factor: int = DEFAULT_REFINE_FACTOR, max_norm_sq: float | list[float] = 0.0, dims: list[int] | None = None) -> None:
        """parts: one FAISS index per column block of xb; max_norm_sq: M^2 of each part's L2
        reduction (L2-reduced kinds only); dims: the width of each block of xb (by default the
        parts' own, which is right for the kinds that are not L2-reduced)."""
        self.parts: list[faiss.Index] = list(parts) if isinstance(parts, (list, tuple)) else [parts]
        self.kind = kind
        self.dims = [int(x) for x in dims] if dims is not None else [int(p.d) for p in self.parts]
        norms = max_norm_sq if isinstance(max_norm_sq, (list, tuple)) else [max_norm_sq] * len(self.parts)
        self.max_norms_sq = [float(x) for x in norms]
        self.nprobe = nprobe  # IVF lists visited per search (HNSW: its efSearch is 4 x nprobe, at least 64)
        self.refine_factor = refine_factor

    @property
    def index(self) -> faiss.Index:
        """The first (with one block, the only) FAISS index."""
        return self.parts[0]

    @property
    def max_norm_sq(self) -> float:
        return self.max_norms_sq[0]

    @property
    def ntotal(self) -> int:
        return int(self.parts[0].ntotal)

    @property
    def approximate_scores(self) -> bool:
        """Whether search scores are approximate (PQ codes): the caller re-ranks exactly."""
        return self.kind == "ivfpq"

    @property
    def nbytes(self) -> int:
        """Serialized size of all parts (about what they hold in memory)."""
        return sum(int(faiss.serialize_index(p).nbytes) for p in self.parts)

    def depth(self, k: int) -> int:
        """How deep a search for k exact candidates goes in the index: k, or refine_factor x k
        when the index's own scores are approximate."""
        return min(self.ntotal, k * self.refine_factor if self.approximate_scores else k)

    def _reduced_queries(self, part: int, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """xq (B, width) as the L2-reduced index searches it: (xq' (B, index width), s (B,), |xq|^2 (B,)).

        Each query is scaled onto the sphere of radius M that every xb' lies on (s = M / |xq|);
        the order of the points is the same for any s > 0, but the order of the IVF centroids
        (inside the sphere) is not: with a short query it is ruled by their norms."""
        m2 = self.max_norms_sq[part]
        norm_sq = np.einsum("bd,bd->b", xq, xq).astype(np.float64)
        ok = (norm_sq > 0) & (m2 > 0)  # a zero query or an all-zero xb: leave it be
        scale = np.where(ok, np.sqrt(m2 / np.maximum(norm_sq, 1e-30)), 1.0)
        xq_l2 = np.zeros((xq.shape[0], self.parts[part].d), dtype=np.float32)
        xq_l2[:, : xq.shape[1]] = xq * scale[:, None]
        return xq_l2, scale, norm_sq

    def search_part(self, part: int, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Search one part as deep as asked (no refinement): xq (B, width of the part) float32
        -> D (B, k) inner products (approximate for PQ codes), I (B, k) ids (-1 = none), and for
        IVF parts the lists the search visited, (B, nprobe) list ids (-1 = none), else None.

        IVF parts: the coarse quantizer is searched here and its assignment handed to FAISS
        (search_preassigned, the same answers as a plain search), so the caller learns which
        lists were visited (the normaliser's strata) without a second coarse search."""
        index = self.parts[part]
        k = min(k, self.ntotal)
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if not _l2_reduced(self.kind):  # flat: exact, nothing to set
            dist, ids = index.search(xq, k)
            return dist, ids, None
        m2 = self.max_norms_sq[part]
        xq_l2, scale, norm_sq = self._reduced_queries(part, xq)
        lists = None
        if self.has_lists:
            ivf = faiss.extract_index_ivf(index)
            nprobe = min(self.nprobe, ivf.nlist)
            coarse, lists = ivf.quantizer.search(xq_l2, nprobe)
            ivf.nprobe = nprobe  # search_preassigned takes no parameter object; it probes the assignment's width
            dist, ids = ivf.search_preassigned(xq_l2, k, lists, coarse)
        else:  # hnsw
            dist, ids = index.search(xq_l2, k, params=faiss.SearchParametersHNSW(efSearch=max(64, self.nprobe * 4)))
        # back to inner products: |s xq' - xb'|^2 = s^2 |xq|^2 + M^2 - 2 s xq . xb  (-1 ids stay -1)
        ip = ((scale**2 * norm_sq)[:, None] + m2 - dist) / (2 * scale[:, None])
        return np.where(ids >= 0, ip, -np.inf).astype(np.float32), ids, lists

    @property
    def has_lists(self) -> bool:
        """Whether the parts are IVF indexes (`lists`, and `search_part` reports the lists visited)."""
        return self.kind in ("ivf", "ivfpq")

    def lists(self, part: int) -> list[np.ndarray]:
        """The entity ids in each IVF list of one part: nlist arrays of int64."""
        ivf = faiss.extract_index_ivf(self.parts[part])
        il = ivf.invlists
        return [faiss.rev_swig_ptr(il.get_ids(i), il.list_size(i)).copy() if il.list_size(i) else np.empty(0, dtype=np.int64) for i in range(ivf.nlist)]

    def search(self, xq: np.ndarray, k: int, xb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A one-part index: xq (B, dim) float32 -> D (B, k) inner products, I (B, k) entity ids
        (-1 = none). For PQ codes, `xb` (the indexed vectors) re-ranks the refine_factor x k
        approximate candidates exactly; without it the approximate top k is returned."""
        if len(self.parts) != 1:
            raise ValueError(f"a {len(self.parts)}-part index is searched part by part (search_part)")
        k = min(k, self.ntotal)
        if not self.approximate_scores or xb is None:
            return self.search_part(0, xq, k)[:2]
        ids = self.search_part(0, xq, self.depth(k))[1]
        safe = np.where(ids >= 0, ids, 0)
        exact = np.einsum("bd,bkd->bk", np.asarray(xq, dtype=np.float32), xb[safe])
        exact = np.where(ids >= 0, exact, -np.inf)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1).astype(np.float32), np.take_along_axis(ids, order, 1)

    @classmethod
    def build(cls, xb: np.ndarray | list[np.ndarray], kind: str, *, nprobe: int = DEFAULT_NPROBE, refine_factor: int = DEFAULT_REFINE_FACTOR, seed: int = 0) -> CandidateIndex:
        """Build an index of `kind` over xb: (N, dim) float32, or a list of column blocks
        (N, dim_i), one part each (the engine gives every branch table its own part)."""
        blocks = xb if isinstance(xb, (list, tuple)) else [xb]
        parts, norms = [], []
        for i, block in enumerate(blocks):
            index, m2 = cls._build_part(np.asarray(block), kind, seed=seed + i)
            parts.append(index)
            norms.append(m2)
        return cls(parts, kind, nprobe=nprobe, refine_factor=refine_factor, max_norm_sq=norms, dims=[int(np.asarray(b).shape[1]) for b in blocks])

    @staticmethod
    def _build_part(xb: np.ndarray, kind: str, *, seed: int) -> tuple[faiss.Index, float]:
        n, dim = xb.shape
        max_norm_sq = 0.0
        if _l2_reduced(kind):
            norms_sq = np.einsum("nd,nd->n", xb, xb, dtype=np.float32)
            max_norm_sq = float(norms_sq.max()) if n else 0.0
            reduced = np.zeros((n, _index_dim(kind, dim)), dtype=np.float32)
            reduced[:, :dim] = xb
            reduced[:, dim] = np.sqrt(np.maximum(max_norm_sq - norms_sq, 0.0))
            xb = reduced
        else:
            xb = np.ascontiguousarray(xb, dtype=np.float32)
        desc = factory_string(kind, n, xb.shape[1])
        t0 = time.monotonic()
        index = faiss.index_factory(xb.shape[1], desc, faiss.METRIC_L2 if _l2_reduced(kind) else faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            # k-means wants ~40 points per centroid (FAISS warns below 39); PQ is happy with fewer.
            nlist = _nlist(n) if kind in ("ivf", "ivfpq") else 0
            size = min(n, max(100_000, 40 * nlist))
            rng = np.random.default_rng(seed)
            sample = xb[np.sort(rng.choice(n, size=size, replace=False))] if size < n else xb
            index.train(sample)
        index.add(xb)
        log.info("built %s index part (%s) over %d x %d in %.1fs", kind, desc, n, dim, time.monotonic() - t0)
        return index, max_norm_sq

    def _meta(self, fingerprint: str, sizes: list[int], dims: list[int]) -> dict:
        return {
            "model_fingerprint": fingerprint,
            "kind": self.kind,
            "factory": [factory_string(self.kind, self.ntotal, int(p.d)) for p in self.parts],
            "ntotal": self.ntotal,
            "dims": dims,  # width of each block of xb
            "part_bytes": sizes,
            "max_norm_sq": self.max_norms_sq,
        }

    def save(self, folder: Path, fingerprint: str) -> None:
        """Write index + sidecar atomically under folder/ (names include the kind).

        OSError when it cannot be written, or when there is no installation key to authenticate
        it with (an index nobody can verify is not worth writing)."""
        chunks = [faiss.serialize_index(p) for p in self.parts]
        save_authenticated(folder, f"{self.kind}.faiss", f"{self.kind}.json", chunks, self._meta(fingerprint, [len(c) for c in chunks], self.dims))

    @classmethod
    def load(cls, folder: Path, kind: str, fingerprint: str, dim: int | list[int], ntotal: int, *, nprobe: int = DEFAULT_NPROBE, refine_factor: int = DEFAULT_REFINE_FACTOR) -> CandidateIndex | None:
        """The saved index of `kind` if it was built from this model (fingerprint, shape: `dim`,
        the width of xb, or a list of the widths of its blocks, one part each), else None."""
        meta = read_meta(folder / f"{kind}.json")
        if meta is None or not (folder / f"{kind}.faiss").is_file():
            return None
        dims = [int(x) for x in dim] if isinstance(dim, (list, tuple)) else [int(dim)]
        norms, sizes = meta.get("max_norm_sq"), meta.get("part_bytes")
        same = meta.get("model_fingerprint") == fingerprint and meta.get("dims") == dims and meta.get("ntotal") == ntotal
        same = same and meta.get("factory") == [factory_string(kind, ntotal, _index_dim(kind, d)) for d in dims]
        same = same and isinstance(norms, list) and len(norms) == len(dims) and all(isinstance(x, (int, float)) for x in norms)
        same = same and isinstance(sizes, list) and len(sizes) == len(dims) and all(isinstance(x, int) and x > 0 for x in sizes)
        if not same:
            log.info("saved %s index belongs to another model or an older format; rebuilding", kind)
            return None
        index_path = folder / f"{kind}.faiss"
        data = load_authenticated(index_path, meta, "index")
        if data is None:
            return None
        if sum(sizes) != len(data):
            log.warning("%s: checksum mismatch (tampered or truncated); refusing it and rebuilding the index", index_path)
            return None
        parts, view, offset = [], np.frombuffer(data, dtype=np.uint8), 0
        try:
            for size in sizes:
                parts.append(faiss.deserialize_index(view[offset:offset + size]))
                offset += size
        except RuntimeError as exc:
            log.warning("ignoring unreadable %s: %s", index_path, exc)
            return None
        if any(p.ntotal != ntotal or p.d != _index_dim(kind, d) for p, d in zip(parts, dims)):
            return None
        return cls(parts, kind, nprobe=nprobe, refine_factor=refine_factor, max_norm_sq=[float(x) for x in norms], dims=dims)
