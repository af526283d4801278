"""FAISS candidate retrieval over the concatenated branch entity tables.

What is indexed. The fused score is p(t) = sum_b w_b(r) sigmoid(q_b . C_b[t]): a weighted sum of
sigmoids, not one inner product. Its close surrogate, the weighted sum of logits
sum_b w_b(r) q_b . C_b[t], *is* one inner product:

    xb[t] = [C_S[t] | C_T[t] | ... | C_MM[t]]          (N, num_branches * d), stored once
    xq    = [w_S q_S | w_T q_T | ... | w_MM q_MM]      (1, num_branches * d), per query

so a maximum-inner-product index over xb returns the surrogate's top K' (FAISS names: xb, xq,
D, I, k). The engine then rescores those K' with the full model, which restores the exact order;
the cost of the approximation is measured as candidate recall (bench/serve_bench.py).

Index types: "flat" (exact inner-product search), "ivf" (IVF-Flat), "ivfpq" (IVF-PQ codes
re-ranked exactly by IndexRefineFlat, for millions), "hnsw"; and "exact", no index at all, which
`auto` picks for small graphs (see `resolve_kind`). Every type uses the inner-product
metric, because that is what the surrogate is. A built index is saved beside the bundle with the
model fingerprint it was built from, and only reused when the fingerprint matches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

INDEX_DIR = "index"


EXACT = "exact"  # no index: the full model scores every entity (exact by construction)


def resolve_kind(kind: str, num_entities: int) -> str:
    """'auto' -> "exact" below 200k entities, "ivfpq" above.

    A flat index computes the same N dot products that exhaustive full-model scoring does (and
    the engine searches it once per branch plus once for the surrogate), so below a few hundred
    thousand entities scoring everything exactly is both exact and faster (FB15k-237: 1.9 ms
    against 4.5 ms per query, docs/benchmarks.md). Sublinear indexes (IVF, PQ, HNSW) win at scale.
    """
    if kind != "auto":
        return kind
    return EXACT if num_entities < 200_000 else "ivfpq"


def factory_string(kind: str, num_entities: int, dim: int) -> str:
    """The FAISS index_factory description of an index type for N vectors of size dim."""
    if kind == "flat":
        return "Flat"
    nlist = max(1, min(65536, int(4 * math.sqrt(num_entities))))
    if kind == "ivf":
        return f"IVF{nlist},Flat"
    if kind == "ivfpq":
        m = _pq_subquantizers(dim)
        return f"IVF{nlist},PQ{m}x8"
    if kind == "hnsw":
        return "HNSW32"
    raise ValueError(f"unknown index type {kind!r}")


def _pq_subquantizers(dim: int) -> int:
    """Largest m <= dim / 4 that divides dim (4 dims per byte-code is a good speed/recall point)."""
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0:
            return m
    return 1


class CandidateIndex:
    """A FAISS inner-product index over xb, with the settings that query it."""

    def __init__(self, index: faiss.Index, kind: str, *, nprobe: int = 32, refine_factor: int = 4) -> None:
        self.index = index
        self.kind = kind
        self.nprobe = nprobe
        self.refine_factor = refine_factor
        self._params = self._search_params()

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def _search_params(self) -> faiss.SearchParameters | None:
        if self.kind == "ivf":
            return faiss.SearchParametersIVF(nprobe=self.nprobe)
        if self.kind == "ivfpq":
            return faiss.IndexRefineSearchParameters(k_factor=float(self.refine_factor), base_index_params=faiss.SearchParametersIVF(nprobe=self.nprobe))
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(64, self.nprobe * 4))
        return None

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """xq: (B, dim) float32 -> D (B, k) surrogate scores, I (B, k) entity ids (-1 = none)."""
        k = min(k, self.ntotal)
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if self._params is None:
            return self.index.search(xq, k)
        return self.index.search(xq, k, params=self._params)

    @classmethod
    def build(cls, xb: np.ndarray, kind: str, *, nprobe: int = 32, refine_factor: int = 4, seed: int = 0) -> CandidateIndex:
        """Build an index of `kind` over xb: (N, dim) float32."""
        n, dim = xb.shape
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        desc = factory_string(kind, n, dim)
        t0 = time.monotonic()
        index = faiss.index_factory(dim, desc, faiss.METRIC_INNER_PRODUCT)
        if kind == "ivfpq":
            index = faiss.IndexRefineFlat(index)
        if not index.is_trained:
            # k-means wants ~40 points per centroid (FAISS warns below 39); PQ is happy with fewer.
            nlist = int(desc[3:].split(",")[0]) if desc.startswith("IVF") else 0
            size = min(n, max(100_000, 40 * nlist))
            rng = np.random.default_rng(seed)
            sample = xb[rng.choice(n, size=size, replace=False)] if size < n else xb
            index.train(sample)
        index.add(xb)
        log.info("built %s index (%s) over %d x %d in %.1fs", kind, desc, n, dim, time.monotonic() - t0)
        return cls(index, kind, nprobe=nprobe, refine_factor=refine_factor)

    def save(self, folder: Path, fingerprint: str) -> None:
        """Write index + metadata atomically under folder/ (names include the kind)."""
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{self.kind}.faiss"
        tmp = folder / f".{self.kind}.faiss.tmp-{os.getpid()}"
        faiss.write_index(self.index, str(tmp))
        meta_tmp = folder / f".{self.kind}.json.tmp-{os.getpid()}"
        meta_tmp.write_text(json.dumps({"model_fingerprint": fingerprint, "kind": self.kind, "ntotal": self.ntotal, "dim": int(self.index.d)}))
        os.replace(tmp, target)
        os.replace(meta_tmp, folder / f"{self.kind}.json")

    @classmethod
    def load(cls, folder: Path, kind: str, fingerprint: str, dim: int, ntotal: int, *, nprobe: int = 32, refine_factor: int = 4) -> CandidateIndex | None:
        """The saved index of `kind` if it was built from this model (fingerprint, shape), else None."""
        meta_path, index_path = folder / f"{kind}.json", folder / f"{kind}.faiss"
        if not (meta_path.is_file() and index_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("ignoring unreadable %s", meta_path)
            return None
        if meta.get("model_fingerprint") != fingerprint or meta.get("dim") != dim or meta.get("ntotal") != ntotal:
            log.info("saved %s index belongs to another model; rebuilding", kind)
            return None
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            log.warning("ignoring unreadable %s: %s", index_path, exc)
            return None
        if index.ntotal != ntotal or index.d != dim:
            return None
        return cls(index, kind, nprobe=nprobe, refine_factor=refine_factor)
