"""What a trained IMF never changes, computed once for serving (`FrozenIMF`), and exhaustive
scoring against column-major entity tables (`score_all`).

A served model is in eval mode and its weights are fixed, yet `IMF.query_vectors` rebuilds, for
every query, each branch's relation embeddings (the relation fusion for the multimodal branch),
the decision weights w(r) and the re-laid core tensor `W.permute(1, 0, 2).reshape(d, d_r * d)`:
a (d_r x d x d) copy per branch per call, then a (1, d) x (d, d_r * d) product that reads the
whole core (4 MiB per branch at d = 128, d_r = 64). `FrozenIMF` computes all of it once:

    M_b(r) = sum_i R_b[r]_i W_b[i]     (d, d) per relation and branch (reciprocals included)
    w(r)   = softmax(alpha + A[r])     (2R, nb)

so a query is one (1, d) x (d, d) product per branch, between the decoder's two (eval-mode,
affine) BatchNorms: q_b = BN1_b(BN0_b(C_b[h]) @ M_b(r)). That is the same sum as
`TuckerDecoder.forward` taken in another order: equal up to float32 rounding (tests/test_serving.py).
When the relation matrices of every branch would take more than `max_relation_bytes`, the
re-laid core is kept instead (computed once, still no copy per call).

Exhaustive scoring reads every entity table once per query: (1, d) x (d, N). With the table
stored row-major as (N, d) that product runs at about a third of the speed of the same product
against a contiguous (d, N) copy on the CPUs measured (docs/benchmarks.md section 5), so
`score_all` takes the transposed tables (`column_tables`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.network.imf import IMF

# Relation matrices M_b(r) of every branch: 2R x nb x d x d floats. Above this the re-laid core
# (nb x d x d_r x d floats) is kept instead. FB15k-237's default model: 474 x 4 x 128 x 128 x 4 B
# = 124 MiB.
MAX_RELATION_BYTES = 256 * 2**20


# Entities per chunk where a float16 table is read as float32 (`all_logits`, `serving_tables`).
CHUNK = 65536


def serving_tables(model: IMF, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Every branch's entity table C_b, (N, d), contiguous, in `dtype`.

    float32: `model.entity_tables()` as it is (the structure and stored modality tables are the
    model's own tensors, no copy). Another type (float16 halves the memory of a million-entity
    graph): computed CHUNK entities at a time and stored as `dtype`, so no float32 table of every
    entity exists at once beyond the model's own rows."""
    with torch.no_grad():
        if dtype == torch.float32:
            return {b: t.detach().contiguous() for b, t in model.entity_tables().items()}
        n = model.cfg.num_entities
        out = {b: torch.empty((n, model.cfg.dim), dtype=dtype) for b in model.branches}
        for start in range(0, n, CHUNK):
            ids = torch.arange(start, min(n, start + CHUNK))
            for b, t in model.entity_tables(ids).items():
                out[b][start:start + len(ids)] = t
        return out


def all_logits(queries: Tensor, columns: Tensor) -> Tensor:
    """queries (B, d) float32 x columns (d, N) -> (B, N) float32 logits. Columns of another type
    (float16 tables) are converted CHUNK entities at a time: one float32 copy of a chunk, never of
    the table."""
    if columns.dtype == queries.dtype:
        return queries @ columns
    n = columns.shape[1]
    out = torch.empty((queries.shape[0], n), dtype=queries.dtype)
    for start in range(0, n, CHUNK):
        out[:, start:start + CHUNK] = queries @ columns[:, start:start + CHUNK].to(queries.dtype)
    return out


def column_tables(tables: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each (N, d) table as a contiguous (d, N) copy, the layout `score_all` reads fastest."""
    return {b: t.detach().t().contiguous() for b, t in tables.items()}


class FrozenIMF:
    """An eval-mode IMF with everything per relation precomputed: query vectors and decision
    weights from lookups and one small product per branch. Holds no entity table (entities can
    be added while it serves); call it again after changing the model's weights."""

    @torch.no_grad()
    def __init__(self, model: IMF, *, max_relation_bytes: int = MAX_RELATION_BYTES) -> None:
        model.eval()
        self.model = model
        self.branches: list[str] = list(model.branches)
        cfg = model.cfg
        d, dr, num_rel = cfg.dim, int(cfg.relation_dim or cfg.dim), 2 * cfg.num_relations
        rel_ids = torch.arange(num_rel)
        rels = model.relation_embeddings(rel_ids)  # (2R, d_r) each
        self.weights: Tensor = model.decision_weights(rel_ids).contiguous()  # (2R, nb)
        self.matrices: dict[str, Tensor] = {}  # branch -> (2R, d, d) M_b(r), when they fit
        self.cores: dict[str, Tensor] = {}  # branch -> (d, d_r * d) re-laid core, otherwise
        self.relations: dict[str, Tensor] = {}  # branch -> (2R, d_r), with `cores`
        self.uses_matrices = num_rel * len(self.branches) * d * d * 4 <= max_relation_bytes
        for b in self.branches:
            core = model.decoders[b].core.detach()  # (d_r, d, d) = W[i, j, k]
            if self.uses_matrices:
                self.matrices[b] = (rels[b].float() @ core.reshape(dr, d * d)).view(num_rel, d, d).contiguous()
            else:
                self.cores[b] = core.permute(1, 0, 2).reshape(d, dr * d).contiguous()  # rows j, columns (i, k)
                self.relations[b] = rels[b].float().contiguous()

    @property
    def nbytes(self) -> int:
        """Memory held by the precomputed tensors."""
        parts = [self.weights, *self.matrices.values(), *self.cores.values(), *self.relations.values()]
        return sum(t.numel() * t.element_size() for t in parts)

    @torch.no_grad()
    def query_vectors(self, heads: Tensor, rel_ids: Tensor, tables: dict[str, Tensor]) -> dict[str, Tensor]:
        """q_b(h, r) for every branch: heads, rel_ids (B,) -> (B, d) each (as IMF.query_vectors
        in eval mode). `tables`: the (N, d) entity tables the heads are rows of."""
        out = {}
        for b in self.branches:
            dec = self.model.decoders[b]
            x = dec.bn0(tables[b][heads].float())  # (B, d), float32 from any stored type
            if self.uses_matrices:
                y = torch.bmm(x.unsqueeze(1), self.matrices[b][rel_ids]).squeeze(1)  # (B, 1, d) x (B, d, d)
            else:
                z = (x @ self.cores[b]).view(x.shape[0], -1, x.shape[1])  # (B, d_r, d)
                y = torch.bmm(self.relations[b][rel_ids].unsqueeze(1), z).squeeze(1)
            out[b] = dec.bn1(y)
        return out

    def decision_weights(self, rel_ids: Tensor) -> Tensor:
        """w(r): (B, nb), as IMF.decision_weights."""
        return self.weights[rel_ids]

    @torch.no_grad()
    def score_all(self, queries: dict[str, Tensor], weights: Tensor, columns: dict[str, Tensor]) -> Tensor:
        """Fused probabilities p of every entity: (B, N) float64, as `IMF.rescore(..., None)`.

        queries: q_b (B, d) per branch; weights: (B, nb); columns: `column_tables` of the
        entity tables, (d, N) each, float32 or float16 (`all_logits`). The branch logits are float32 products (summed in another
        order than against (N, d) tables: equal up to float32 rounding); the probabilities and
        their weighted sum are float64, as in `IMF.fuse`. A softmax branch takes one pass of
        exp over its row, exp(s - max) / sum exp(s - max), where `IMF.fuse` takes two (a
        logsumexp, then exp(s - logsumexp)): the same numbers to float64 rounding, and the exp
        passes are most of the cost once the products are batched.
        """
        logits = {b: all_logits(queries[b], columns[b]) for b in self.branches}  # (B, N) each
        if self.model.cfg.output != "softmax":
            return self.model.fuse(logits, weights)
        w64 = weights.double()
        p: Tensor | None = None
        for i, b in enumerate(self.branches):
            e = logits[b].double()
            e = e.sub_(e.amax(dim=1, keepdim=True)).exp_()  # exp(s - max): (B, N)
            term = e.mul_(w64[:, i:i + 1] / e.sum(dim=1, keepdim=True))  # w_b P_b
            p = term if p is None else p.add_(term)
        assert p is not None
        return p

    @torch.no_grad()
    def log_normalizers(self, queries: dict[str, Tensor], columns: dict[str, Tensor]) -> dict[str, Tensor]:
        """log sum_t exp(s_b(h, r, t)) over all N entities: (B,) float64 per branch, as
        IMF.log_normalizers (whole rows at once: for the N that have column tables)."""
        out = {}
        for b in self.branches:
            v = all_logits(queries[b], columns[b]).double()  # (B, N)
            top = v.amax(dim=1, keepdim=True)
            out[b] = (top + v.sub_(top).exp_().sum(dim=1, keepdim=True).log_()).squeeze(1)
        return out
