"""IMF: Interactive Multimodal Fusion for link prediction (Li et al., WWW 2023), as docs/model.md
describes it (and where it departs from the paper and the reference code).

Branches. `structure` (a learned entity table), one branch per feature modality (`text`,
`visual`, `numeric`, ...: any set), and `multimodal` (the fused branch) when at least one feature
modality is present. Every branch b has an entity table C_b of shape (N, d) and its own TuckER
decoder; the model's answer is a learned weighted average of the branch probabilities:

    q_b(h, r)    = BN1_b( BN0_b(C_b[h]) @ M_b(r) ),   M_b(r) = reshape(R_b[r] @ W_b, (d, d))
    s_b(h, r, t) = q_b(h, r) . C_b[t]                                        (branch logit)
    p(h, r, t)   = sum_b w_b(r) * P_b(t | h, r),   w(r) = softmax(alpha + A[r])

The branch probability P_b depends on the training loss (`IMFConfig.output`): "softmax"
(1-vs-all cross-entropy, the default) makes P_b(. | h, r) = softmax over all N entities of
s_b(h, r, .), so p is a mixture of the branch distributions and sums to 1 over the entities;
"sigmoid" (the paper's binary cross-entropy) makes P_b = sigmoid(s_b), a per-triple probability.

Modality encoders: frozen features x_m (N, f_m) -> Linear(f_m, d), plus an optional per-entity
residual (the capacity of the reference code's fine-tuned table, but defined for new entities
too); entities lacking the modality use a learned `missing` vector instead of the projection.

Fusion (stage 1): Tucker/MUTAN bilinear pooling of rank R over the structure and modality
embeddings, for entities and (with a second net) for relations:
    e_mm = sum_k prod_m tanh(W_mk e_m + b_mk)           (default, MUTAN's activation)
    e_mm = ReLU( sum_k prod_m ReLU(W_mk e_m + b_mk) )   (fusion_activation="relu", the paper's)

Relations are doubled: id r + num_relations is the reciprocal of r, used for head prediction
(query (t, r^-1, ?)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import fraction, positive_int, setting
from model.kg.dataset import RESERVED_MODALITY_NAMES

STRUCTURE = "structure"
MULTIMODAL = "multimodal"
FUSED = "fused"  # name of the decision-fusion output in metrics
assert {STRUCTURE, MULTIMODAL, FUSED} == set(RESERVED_MODALITY_NAMES)  # one list of reserved names


# IMFConfig fields that act only while training: a continued or widened run may change them.
TRAINING_ONLY_FIELDS = ("input_dropout", "hidden_dropout1", "hidden_dropout2")


@dataclass
class IMFConfig:
    """Everything needed to rebuild the model from a bundle (stored in its manifest). The
    `setting` fields are also `imf train` options (model.config), defaults and help included.

    num_entities, num_relations and modalities describe the graph, and are filled in from the
    dataset when a model is built for it (model.training.loop.build_model)."""

    num_entities: int = 0
    num_relations: int = 0  # base relations; the model holds 2x that (reciprocals)
    modalities: dict[str, int] = field(default_factory=dict)  # feature modality -> input dim, ordered
    dim: int = setting(200, "entity embedding size d", parse=positive_int)
    relation_dim: int | None = setting(None, "relation embedding size d_r (core tensor W_b: d_r x d x d; default: --dim)", parse=positive_int)
    fusion_rank: int = setting(2, "Tucker rank R of the bilinear fusion", parse=positive_int)
    fusion_activation: str = setting("tanh", "factor activation of the bilinear fusion: tanh (MUTAN's) or relu (the paper's; docs/model.md)", choices=("tanh", "relu"))
    input_dropout: float = setting(0.3, "dropout on each decoder's normalised head embedding", parse=fraction)
    hidden_dropout1: float = setting(0.4, "dropout on the entries of the relation matrix M(r)", parse=fraction)
    hidden_dropout2: float = setting(0.5, "dropout on each decoder's query vector", parse=fraction)
    feature_residual: bool = setting(True, "no per-entity residual on modality projections", flag="--no-residual")
    decision_fusion: str = setting("learned", "learned: w(r) = softmax(alpha + A[r]); equal: 1/B for every branch", choices=("learned", "equal"))
    output: str = "softmax"  # branch probability: "softmax" over entities (cross-entropy) or "sigmoid" (BCE); set by the training loss
    # True in a compact bundle: each modality's final entity table (N, d) is stored instead of
    # its raw features and per-entity residual (what serving needs, a fraction of the size).
    stored_tables: bool = False

    def __post_init__(self) -> None:
        if self.relation_dim is None:
            self.relation_dim = self.dim
        if self.fusion_activation not in ("tanh", "relu"):
            raise ValueError(f"fusion_activation must be 'tanh' or 'relu', not {self.fusion_activation!r}")
        if self.output not in ("softmax", "sigmoid"):
            raise ValueError(f"output must be 'softmax' or 'sigmoid', not {self.output!r}")
        if self.decision_fusion not in ("learned", "equal"):
            raise ValueError(f"decision_fusion must be 'learned' or 'equal', not {self.decision_fusion!r}")
        for name in self.modalities:
            if name in RESERVED_MODALITY_NAMES:
                raise ValueError(f"modality name {name!r} is reserved")
        if self.dim < 1 or self.relation_dim < 1 or self.fusion_rank < 1:
            raise ValueError("dim, relation_dim and fusion_rank must be positive")

    @property
    def branches(self) -> list[str]:
        mods = list(self.modalities)
        return [STRUCTURE, *mods, MULTIMODAL] if mods else [STRUCTURE]

    def to_dict(self) -> dict:
        return asdict(self)


def _init(fn, tensor: Tensor) -> None:
    """Apply a torch.nn.init function, except on the meta device (a bundle being loaded builds
    the model there: every weight then comes from its file). torch's normal_ has no meta kernel:
    on meta it costs a one-off import of about a second and produces nothing."""
    if not tensor.is_meta:
        fn(tensor)


def _embedding(num: int, dim: int) -> nn.Embedding:
    """nn.Embedding(num, dim) with its usual N(0, 1) init (the same random draws: seeded runs
    are unchanged), skipped on the meta device (`_init`)."""
    weight = torch.empty(num, dim)
    _init(nn.init.normal_, weight)
    return nn.Embedding(num, dim, _weight=weight)


class BilinearFusion(nn.Module):
    """Tucker-decomposed (MUTAN-style) fusion of M inputs of size d_in into one of size d_out.

    activation "relu" (the paper's):  out = ReLU( sum_k prod_m ReLU(W_mk x_m + b_mk) )
    activation "tanh" (MUTAN's own choice):   out = sum_k prod_m tanh(W_mk x_m + b_mk)

    Each W_m holds its R factors stacked. With ReLU factors the product of M >= 2 non-negative,
    mostly-zero vectors leaves the fused table sparse and nearly constant across entities; on
    FB15k-237 its branch then barely learns (docs/model.md), so "tanh" is the default.
    """

    def __init__(self, num_inputs: int, d_in: int, d_out: int, rank: int, activation: str = "tanh") -> None:
        super().__init__()
        self.rank = rank
        self.d_out = d_out
        self.activation = activation
        self.factors = nn.ModuleList(nn.Linear(d_in, rank * d_out) for _ in range(num_inputs))

    def forward(self, inputs: list[Tensor]) -> Tensor:
        """inputs: M tensors of shape (n, d_in) -> (n, d_out)."""
        act = F.relu if self.activation == "relu" else torch.tanh
        prod: Tensor | None = None
        for x, lin in zip(inputs, self.factors, strict=True):
            z = act(lin(x)).view(x.shape[0], self.rank, self.d_out)  # (n, R, d_out)
            prod = z if prod is None else prod * z
        assert prod is not None
        out = prod.sum(dim=1)
        return F.relu(out) if self.activation == "relu" else out


class TuckerDecoder(nn.Module):
    """One branch's contextual relational decoder: q(h, r) = BN1(BN0(e_h) @ M(r)), with TuckER's
    three dropouts (on BN0's output, on the entries of M(r), on BN1's output)."""

    def __init__(self, dim: int, relation_dim: int, cfg: IMFConfig) -> None:
        super().__init__()
        self.dim = dim
        # Core tensor W: (d_r, d, d), initialised as in TuckER.
        self.core = nn.Parameter(torch.empty(relation_dim, dim, dim).uniform_(-1.0, 1.0))
        self.bn0 = nn.BatchNorm1d(dim)
        self.bn1 = nn.BatchNorm1d(dim)
        self.input_dropout = nn.Dropout(cfg.input_dropout)
        self.hidden_dropout1 = nn.Dropout(cfg.hidden_dropout1)
        self.hidden_dropout2 = nn.Dropout(cfg.hidden_dropout2)

    def forward(self, head_emb: Tensor, rel_emb: Tensor, rel_ids: Tensor) -> Tensor:
        """head_emb: (B, d); rel_emb: (U, d_r) for the distinct relations `unique(rel_ids)`;
        rel_ids: (B,) index into rel_emb. Returns q: (B, d).

        q_k = sum_{i,j} r_i x_j W[i, j, k] is computed head-side first: Z = x @ W as one
        (B, d) x (d, d_r * d) matmul, then each row of Z (d_r, d) is contracted with its
        relation vector. That is one large matmul and one batched product, with no per-relation
        loop and no (B, d, d) tensor (peak extra memory B * d_r * d floats); its cost,
        B * d * d_r * d, does not grow with the number of distinct relations in the batch.
        """
        d = self.dim
        x = self.input_dropout(self.bn0(head_emb))  # (B, d)
        core = self.core  # (d_r, d, d) = W[i, j, k]
        # TuckER drops entries of the relation matrix M(r)[j, k] (DropConnect), not output
        # units: each output then keeps most of its d inputs. One (d, d) mask per batch, shared
        # by its relations, is the same as masking W[:, j, k]; drawing a mask per relation
        # (U x d x d random numbers) made a CPU training step much slower (docs/benchmarks.md
        # section 3).
        if self.training and self.hidden_dropout1.p > 0:
            keep = 1.0 - self.hidden_dropout1.p
            mask = torch.empty(1, d, d, device=core.device).bernoulli_(keep).div_(keep)
            core = core * mask
        dr = core.shape[0]
        w_head = core.permute(1, 0, 2).reshape(d, dr * d)  # (d, d_r * d): rows j, columns (i, k)
        z = (x @ w_head).view(-1, dr, d)  # (B, d_r, d)
        r = rel_emb[rel_ids].to(z.dtype).unsqueeze(1)  # (B, 1, d_r)
        out = torch.bmm(r, z).squeeze(1)  # (B, d)
        out = self.bn1(out)
        return self.hidden_dropout2(out)


class IMF(nn.Module):
    """The IMF model. See the module docstring for the math and names.

    Feature matrices are buffers (stored in float16 in the bundle), so a bundle alone rebuilds
    the model and serves every entity it was trained with.
    """

    def __init__(self, cfg: IMFConfig, features: dict[str, Tensor] | None = None, present: dict[str, Tensor] | None = None) -> None:
        """features[m]: (N, f_m) float; present[m]: (N,) bool. Omitted when loading from a
        bundle (the state dict then fills the buffers)."""
        super().__init__()
        self.cfg = cfg
        n, d, dr = cfg.num_entities, cfg.dim, cfg.relation_dim
        self.branches = cfg.branches
        self.modalities = list(cfg.modalities)
        num_rel = 2 * cfg.num_relations

        self.entity = _embedding(n, d)
        _init(nn.init.xavier_normal_, self.entity.weight)
        # Relation embeddings of every branch that has its own (all but multimodal, which fuses them).
        self.relation = nn.ModuleDict({b: _embedding(num_rel, dr) for b in [STRUCTURE, *self.modalities]})
        for emb in self.relation.values():
            _init(nn.init.xavier_normal_, emb.weight)

        self.projection = nn.ModuleDict()
        self.missing = nn.ParameterDict()
        self.residual = nn.ModuleDict()
        for m, f_dim in cfg.modalities.items():
            pres = present[m] if present is not None else torch.zeros(n, dtype=torch.bool)
            if cfg.stored_tables:
                self.register_buffer(f"table_{m}", torch.zeros(n, d))  # filled from the bundle
            else:
                feat = features[m] if features is not None else torch.zeros(n, f_dim)
                if feat.shape != (n, f_dim):
                    raise ValueError(f"modality {m!r}: features {tuple(feat.shape)} do not match ({n}, {f_dim})")
                self.register_buffer(f"features_{m}", feat.to(torch.float16))
            if pres.shape != (n,):
                raise ValueError(f"modality {m!r}: mask {tuple(pres.shape)} does not match ({n},)")
            self.register_buffer(f"present_{m}", pres.to(torch.bool))
            self.projection[m] = nn.Linear(f_dim, d)
            missing = torch.empty(d)
            _init(lambda t: t.normal_().mul_(0.1), missing)  # torch.randn(d) * 0.1, the same draws and rounding
            self.missing[m] = nn.Parameter(missing)
            if cfg.feature_residual and not cfg.stored_tables:
                self.residual[m] = _embedding(n, d)
                nn.init.zeros_(self.residual[m].weight)

        if self.modalities:
            num_inputs = 1 + len(self.modalities)
            self.entity_fusion = BilinearFusion(num_inputs, d, d, cfg.fusion_rank, cfg.fusion_activation)
            self.relation_fusion = BilinearFusion(num_inputs, dr, dr, cfg.fusion_rank, cfg.fusion_activation)
        self.decoders = nn.ModuleDict({b: TuckerDecoder(d, dr, cfg) for b in self.branches})

        nb = len(self.branches)
        self.alpha = nn.Parameter(torch.zeros(nb))  # global decision-fusion logits
        self.relation_alpha = _embedding(num_rel, nb)  # relation-specific part A[r]
        nn.init.zeros_(self.relation_alpha.weight)
        if cfg.decision_fusion == "equal":
            self.alpha.requires_grad_(False)
            self.relation_alpha.weight.requires_grad_(False)

    # ---------------------------------------------------------------- embeddings

    def present(self, modality: str) -> Tensor:
        """(N,) bool: which entities have `modality`."""
        return getattr(self, f"present_{modality}")

    def modality_embeddings(self, modality: str, ids: Tensor | None = None) -> Tensor:
        """Embeddings of one feature modality for entities `ids` (all when None): (n, d)."""
        if self.cfg.stored_tables:
            table: Tensor = getattr(self, f"table_{modality}")
            return table if ids is None else table[ids]
        feats: Tensor = getattr(self, f"features_{modality}")
        pres = self.present(modality)
        if ids is not None:
            feats, pres = feats[ids], pres[ids]
        proj = self.projection[modality](feats.float())  # (n, d)
        emb = torch.where(pres[:, None], proj, self.missing[modality].expand_as(proj))
        if self.cfg.feature_residual:
            res = self.residual[modality].weight if ids is None else self.residual[modality](ids)
            emb = emb + res
        return emb

    def entity_tables(self, ids: Tensor | None = None) -> dict[str, Tensor]:
        """Entity embeddings C_b of every branch for `ids` (all entities when None): (n, d) each."""
        if self.entity_rows_released:
            raise RuntimeError("this model's entity rows were released (release_entity_rows): the server holds its entity tables itself")
        tables = {STRUCTURE: self.entity.weight if ids is None else self.entity(ids)}
        for m in self.modalities:
            tables[m] = self.modality_embeddings(m, ids)
        if self.modalities:
            tables[MULTIMODAL] = self.entity_fusion([tables[STRUCTURE], *(tables[m] for m in self.modalities)])
        return tables

    # Per-entity tensors: the structure table, stored modality tables, raw features, residuals.
    ENTITY_ROW_PREFIXES = ("entity.", "table_", "features_", "residual.")

    @property
    def entity_rows_released(self) -> bool:
        return bool(getattr(self, "_entity_rows_released", False))

    def release_entity_rows(self) -> int:
        """Drop every per-entity tensor (ENTITY_ROW_PREFIXES: N rows each) and return the bytes
        freed. For a server that has computed its entity tables once (`entity_tables`) and keeps
        them in another layout or type: at a million entities these rows are 1.5 GB that
        nothing reads again. Relations, decoders, projections, fusion and decision weights stay
        (queries, and the rows of new entities, need them); `entity_tables` raises afterwards."""
        freed = 0
        for name, tensor in [*self.named_parameters(), *self.named_buffers()]:
            if not name.startswith(self.ENTITY_ROW_PREFIXES):
                continue
            owner = self.get_submodule(name.rpartition(".")[0]) if "." in name else self
            leaf = name.rpartition(".")[2]
            freed += tensor.numel() * tensor.element_size()
            empty = torch.empty((0, *tensor.shape[1:]), dtype=tensor.dtype)  # on the CPU, also for a row never loaded (meta)
            if isinstance(tensor, nn.Parameter):
                setattr(owner, leaf, nn.Parameter(empty, requires_grad=tensor.requires_grad))
            else:
                setattr(owner, leaf, empty)
        self._entity_rows_released = True
        return freed

    def relation_embeddings(self, rel_ids: Tensor) -> dict[str, Tensor]:
        """Relation embeddings of every branch for `rel_ids` (with reciprocals): (U, d_r) each."""
        rels = {b: self.relation[b](rel_ids) for b in [STRUCTURE, *self.modalities]}
        if self.modalities:
            rels[MULTIMODAL] = self.relation_fusion([rels[STRUCTURE], *(rels[m] for m in self.modalities)])
        return rels

    # ---------------------------------------------------------------- scoring

    def decision_weights(self, rel_ids: Tensor) -> Tensor:
        """w(r): (B, num_branches), rows sum to 1, columns in `self.branches` order."""
        if self.cfg.decision_fusion == "equal":
            nb = len(self.branches)
            return torch.full((rel_ids.shape[0], nb), 1.0 / nb, device=rel_ids.device)
        return torch.softmax(self.alpha + self.relation_alpha(rel_ids), dim=-1)

    def query_vectors(self, heads: Tensor, rel_ids: Tensor, tables: dict[str, Tensor]) -> dict[str, Tensor]:
        """q_b(h, r) for every branch: heads, rel_ids: (B,) -> (B, d) each.

        `tables` are the full entity tables (from `entity_tables()`), so the head embedding is
        the same row that scores the head as a candidate.
        """
        uniq, inverse = torch.unique(rel_ids, return_inverse=True)
        rels = self.relation_embeddings(uniq)
        return {b: self.decoders[b](tables[b][heads], rels[b], inverse) for b in self.branches}

    def forward(self, heads: Tensor, rel_ids: Tensor) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """1-N scoring. heads, rel_ids: (B,).

        Returns (logits, weights, tables): logits[b] (B, N) branch logits s_b against every
        entity; weights (B, num_branches) = w(r); tables the entity tables used (for the
        contrastive loss).
        """
        tables = self.entity_tables()
        queries = self.query_vectors(heads, rel_ids, tables)
        logits = {b: queries[b] @ tables[b].T for b in self.branches}
        return logits, self.decision_weights(rel_ids), tables

    def subset_logits(
        self, ids: Tensor, heads: Tensor, rel_ids: Tensor, candidates: Tensor
    ) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """Scoring against a subset of the entities, the entity tables computed for `ids` only
        (sampled training, model.training.sampling: the cost does not grow with N).

        ids: (U,) entity ids; heads: (B,) and candidates: (C,) positions in `ids`; rel_ids: (B,).
        Returns (logits, weights, tables): logits[b] (B, C) against the entities ids[candidates],
        weights (B, num_branches), tables[b] (U, d) the rows of `entity_tables()` for `ids`.
        """
        tables = self.entity_tables(ids)
        queries = self.query_vectors(heads, rel_ids, tables)
        logits = {b: queries[b] @ tables[b][candidates].T for b in self.branches}
        return logits, self.decision_weights(rel_ids), tables

    def log_normalizers(self, queries: dict[str, Tensor], tables: dict[str, Tensor], chunk: int = 65536) -> dict[str, Tensor]:
        """log sum_t exp(s_b(h, r, t)) over all N entities, per branch: (B,) each, float64.

        The softmax normaliser of each branch. Computed in entity chunks so that the peak
        extra memory is B x chunk floats whatever N is (a running logsumexp).
        """
        out = {}
        for b in self.branches:
            q, table = queries[b], tables[b]
            acc = torch.full((q.shape[0],), -math.inf, dtype=torch.float64, device=q.device)
            for start in range(0, table.shape[0], chunk):
                part = (q @ table[start:start + chunk].to(q.dtype).T).double()  # (B, chunk); tables stored in float16 are read as float32 a chunk at a time
                acc = torch.logaddexp(acc, torch.logsumexp(part, dim=1))
            out[b] = acc
        return out

    def branch_probabilities(self, logits: dict[str, Tensor], log_norm: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """P_b for every branch, float64. logits[b]: (B, K) -> (B, K).

        "sigmoid": sigmoid(s_b). "softmax": exp(s_b - log_norm_b); `log_norm` (B,) per branch
        is required when the K columns are not all N entities (see `log_normalizers`).
        """
        if self.cfg.output == "sigmoid":
            return {b: torch.sigmoid(v.double()) for b, v in logits.items()}
        out = {}
        for b, v in logits.items():
            v64 = v.double()  # once per branch: (B, N) float64 copies are the cost here
            norm = torch.logsumexp(v64, dim=1) if log_norm is None else log_norm[b]
            out[b] = torch.exp(v64 - norm[:, None])  # not in place: training differentiates this
        return out

    def fuse(self, logits: dict[str, Tensor], weights: Tensor, log_norm: dict[str, Tensor] | None = None) -> Tensor:
        """p = sum_b w_b P_b (float64). logits[b]: (B, K); weights: (B, nb) -> (B, K)."""
        probs = self.branch_probabilities(logits, log_norm)
        p = None
        for i, b in enumerate(self.branches):
            term = weights[:, i:i + 1].double() * probs[b]
            p = term if p is None else p + term
        assert p is not None
        return p

    def score_candidates(
        self,
        heads: Tensor,
        rel_ids: Tensor,
        candidates: Tensor | None = None,
        *,
        tables: dict[str, Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Exact scores. heads, rel_ids: (B,); candidates: (B, K) entity ids, or None for all N.

        `tables` are precomputed `entity_tables()` (serving computes them once at start-up).
        Returns (logits, weights, p): logits[b] (B, K), weights (B, nb), p (B, K) fused
        probabilities in float64 (which keeps p from saturating to exactly 1.0, i.e. ties, for
        confident branches; the logits are float32 matmul results either way).
        """
        if tables is None:
            tables = self.entity_tables()
        queries = self.query_vectors(heads, rel_ids, tables)
        weights = self.decision_weights(rel_ids)
        log_norm = None
        if candidates is not None and self.cfg.output == "softmax":
            log_norm = self.log_normalizers(queries, tables)  # exact: over all N, not the K
        logits, p = self.rescore(queries, weights, tables, candidates, log_norm=log_norm)
        return logits, weights, p

    def rescore(
        self,
        queries: dict[str, Tensor],
        weights: Tensor,
        tables: dict[str, Tensor],
        candidates: Tensor | None = None,
        *,
        log_norm: dict[str, Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Branch logits and fused p from precomputed query vectors q_b (B, d) and w (B, nb).

        candidates: (B, K) entity ids, or None for all N. log_norm: the softmax normalisers
        (B,) per branch when candidates are given and `output` is "softmax"; None there
        normalises over the K candidates only (an approximation: the candidates hold most of
        the probability mass when K' is deep enough). Returns logits[b] (B, K) and p (B, K).
        """
        if candidates is None:
            logits = {b: queries[b] @ tables[b].T for b in self.branches}  # (B, N)
        else:  # (B, d) . (B, K, d) -> (B, K)
            logits = {b: torch.einsum("bd,bkd->bk", queries[b], tables[b][candidates]) for b in self.branches}
        return logits, self.fuse(logits, weights, log_norm)

    @torch.no_grad()
    def compacted(self) -> IMF:
        """The same model with each modality's entity table stored instead of its features and
        residual (`IMFConfig.stored_tables`): identical scores, no longer trainable from features."""
        if self.cfg.stored_tables or not self.modalities:
            return self
        cfg = IMFConfig(**{**self.cfg.to_dict(), "stored_tables": True})
        out = IMF(cfg)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(("features_", "residual."))}
        for m in self.modalities:
            state[f"table_{m}"] = self.modality_embeddings(m).detach().float()
        out.load_state_dict(state, strict=True)
        return out.train(self.training)

    def load_compacted(self, compact: IMF) -> None:
        """Load a compacted model's weights into this trainable one (same configuration, raw
        features in place): the inverse of `compacted()`, so a shipped bundle can be trained
        further. Each stored table C_m becomes this model's projection of its own features plus
        a residual R_m = C_m - proj_m(f_m), so `entity_tables()` reproduces the stored tables
        exactly (the int8 rounding of a compact bundle is carried over, not undone)."""
        if not compact.cfg.stored_tables or self.cfg.stored_tables:
            raise ValueError("load_compacted expects a compacted source and a trainable target")
        if self.modalities and not self.cfg.feature_residual:
            raise ValueError("a compacted model can only be expanded into one with feature_residual=True")
        src = compact.state_dict()
        state = self.state_dict()
        for k, v in src.items():
            if not k.startswith("table_"):
                state[k] = v
        self.load_state_dict(state, strict=True)
        with torch.no_grad():
            for m in self.modalities:
                if not torch.equal(self.present(m), compact.present(m)):
                    raise ValueError(f"modality {m!r}: the features cover other entities than the compacted model's")
                self.residual[m].weight.zero_()
                base = self.modality_embeddings(m)  # projection or missing vector, residual 0
                self.residual[m].weight.copy_(getattr(compact, f"table_{m}").float() - base)

    @torch.no_grad()
    def widen_relations(self, src: IMF) -> None:
        """Load `src`, the same model with a smaller relation size d_r, into this one (larger d_r)
        so that both score exactly alike; the added relation dimensions then learn from there.

        Function-preserving: every branch's core keeps src's slices W[:d_r_src] and gets zero
        slices for the new relation dimensions, so whatever the new relation coordinates are,
        M(r) = sum_i r_i W_i is unchanged. The new coordinates of the relation embeddings start
        random (at the scale of the trained ones), which gives the zero slices a gradient from
        the first step. The relation fusion (multimodal branch) reads the new input coordinates
        through zero weights, so its old outputs are unchanged; its new outputs feed the zero
        slices of the multimodal core. Everything else is copied as it is.
        """
        ignore = {"relation_dim", *TRAINING_ONLY_FIELDS}
        mine, theirs = self.cfg.to_dict(), src.cfg.to_dict()
        diff = sorted(k for k in mine if k not in ignore and mine[k] != theirs.get(k))
        if diff:
            raise ValueError("widening needs the same model apart from relation_dim; differs: " + ", ".join(diff))
        old, new = src.cfg.relation_dim, self.cfg.relation_dim
        if old > new:
            raise ValueError(f"relation_dim can only grow ({old} -> {new})")
        rank = self.cfg.fusion_rank
        state = self.state_dict()  # views of this model's tensors: copy_ writes into them
        for key, value in src.state_dict().items():
            dst = state[key]
            if dst.shape == value.shape:
                dst.copy_(value)
            elif key.startswith("relation.") and key.endswith(".weight"):  # (2R, d_r)
                scale = value.float().std().clamp(min=1e-6) / dst[:, old:].float().std().clamp(min=1e-6)
                dst[:, old:].mul_(scale)
                dst[:, :old].copy_(value)
            elif key.endswith(".core"):  # (d_r, d, d)
                dst.zero_()
                dst[:old].copy_(value)
            elif key.startswith("relation_fusion.factors.") and key.endswith(".weight"):  # (R * d_r, d_r): rows (k, out)
                view = dst.view(rank, new, new)
                view[:, :, old:] = 0.0
                view[:, :old, :old] = value.view(rank, old, old)
            elif key.startswith("relation_fusion.factors.") and key.endswith(".bias"):  # (R * d_r,)
                dst.view(rank, new)[:, :old] = value.view(rank, old)
            else:
                raise ValueError(f"cannot widen {key}: {tuple(value.shape)} -> {tuple(dst.shape)}")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def expected_random_mrr(num_entities: int) -> float:
    """MRR of a uniformly random ranker over N candidates: H_N / N."""
    return sum(1.0 / k for k in range(1, num_entities + 1)) / num_entities if num_entities else 0.0


__all__ = [
    "FUSED",
    "IMF",
    "IMFConfig",
    "MULTIMODAL",
    "STRUCTURE",
    "TRAINING_ONLY_FIELDS",
    "expected_random_mrr",
]
