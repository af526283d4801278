"""A resolved query: what the engine answers and the cache keys name (ids, never the names a
client used, so equal questions share an entry)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Query:
    """Entity and base relation indices (the reciprocal is applied for heads by the engine)."""

    entity: int
    relation: int  # base relation id (0 .. R-1)
    direction: str
    k: int
    filter_known: bool

    def cache_key(self, fingerprint: str, retrieval: str = "exact") -> str:
        """`retrieval` (Predictor.retrieval) names the settings the answer depends on (index
        type, K', nprobe, refinement, extras, added entities), so changing them never serves an
        answer they did not give. v3: the value is the answer's compact JSON bytes, served
        as stored (service.answers); entries of earlier versions are never read."""
        return f"imf:v3:{fingerprint[:16]}:{retrieval}:{self.direction}:{self.entity}:{self.relation}:{self.k}:{int(self.filter_known)}"
