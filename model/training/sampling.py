"""Sampled training: each batch scored against a shared sample of entities, not all N.

1-vs-all training (model.training.loop) scores every query against all N entities and computes
every modality table and the fusion over all N entities at every step: B x d x N per branch per
step, right for 15k entities, out of reach on a CPU at a million. In sampled mode
(`TrainConfig.negatives` = K > 0) each step

1. draws K negatives with replacement from a proposal q (uniform, q = 1/N, or "frequency":
   q proportional to (training degree + 1)^0.75) with the run's seeded torch.Generator;
2. forms the candidate set: A, every training answer of every query in the batch (exactly the
   answers the per-answer cross-entropy targets), then the distinct negatives not in A;
3. computes the entity tables of every branch (structure row, modality projections + residuals,
   the fusion) for the distinct entities touched only: the batch's heads and the candidates
   (`IMF.subset_logits`), so the step's cost depends on B, K and the answers, not on N;
4. scores the batch against the candidates (B x C logits per branch, C <= |A| + K) and takes the
   same loss as 1-vs-all (model.network.losses.mixture_cross_entropy: per-branch CE plus the CE
   of the decision-fusion mixture, per-answer weighting) over the corrected logits

       s'_c = s_c                               for c in A (always in the sample)
       s'_c = s_c - log(K q_c / n_c)            for a negative c drawn n_c times

   (model.network.losses.sampled_logit_correction). sum_c exp(s'_c) over the candidates is then
   an unbiased estimate of the softmax normaliser over all N entities, and with every entity
   drawn once under q = 1/N, K = N, the loss is exactly the 1-vs-all loss (tests/test_sampled.py).

Rows of the entity tables outside the touched set get no gradient from the step, and in a
single process they are not updated either: the per-entity tables (structure embedding,
modality residuals) then give sparse gradients and the optimizer is `LazyAdam`, Adam on the
touched rows only (a dense Adam step over a million-row table costs more than the whole sampled
forward and backward pass). Under DistributedDataParallel the gradients stay dense (all-reduced
as in 1-vs-all) and the optimizer is torch's Adam.

The contrastive loss, when on, takes its entities from a uniform draw of `contrastive_size`
(distinct ids kept), added to the touched set. Label smoothing and the BCE loss need every
entity's logit and are refused (TrainConfig). Evaluation is unchanged (exact, filtered,
1-vs-all in chunks).

Several processes (DistributedDataParallel): every rank holds the same seeded generator and
draws the same negatives at every step, so the sample is shared by the global batch; each rank
adds its own shard's answers (A differs per rank, which only changes which answers of other
shards sit in a rank's normaliser exactly rather than by chance).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model.network.imf import IMF, STRUCTURE
from model.network.losses import (
    contrastive_loss,
    mixture_cross_entropy,
    sampled_logit_correction,
)
from model.training.config import TrainConfig

FREQUENCY_POWER = 0.75  # q ~ (degree + 1)^0.75, word2vec's smoothing of the unigram distribution


class NegativeSampler:
    """Draws K negatives with replacement from q over N entities. distribution "uniform"
    (q = 1/N) or "frequency" (q ~ (degree + 1)^0.75, `degrees` (N,) required)."""

    def __init__(self, num_entities: int, k: int, distribution: str = "uniform", degrees: np.ndarray | None = None) -> None:
        if k < 1:
            raise ValueError(f"K must be positive, not {k}")
        self.n, self.k, self.distribution = num_entities, k, distribution
        if distribution == "uniform":
            self.log_q_all = None
            self.cdf = None
        elif distribution == "frequency":
            if degrees is None or len(degrees) != num_entities:
                raise ValueError("frequency sampling needs the degree of every entity")
            w = (np.asarray(degrees, dtype=np.float64) + 1.0) ** FREQUENCY_POWER
            q = w / w.sum()
            self.log_q_all = torch.from_numpy(np.log(q))
            self.cdf = torch.from_numpy(np.cumsum(q))
        else:
            raise ValueError(f"unknown negative sampling {distribution!r}")

    def draw(self, generator: torch.Generator | None) -> Tensor:
        """(K,) int64 entity ids (CPU), with replacement."""
        if self.cdf is None:
            return torch.randint(self.n, (self.k,), generator=generator)
        u = torch.rand(self.k, generator=generator, dtype=torch.float64) * self.cdf[-1]
        return torch.searchsorted(self.cdf, u).clamp_(max=self.n - 1)

    def log_q(self, ids: Tensor) -> Tensor:
        """log q of each id: (n,) float64."""
        if self.log_q_all is None:
            return torch.full(ids.shape, -math.log(self.n), dtype=torch.float64)
        return self.log_q_all[ids]


@dataclass
class Sample:
    """One step's entities. Every index tensor but `ids` holds positions in `ids`."""

    ids: Tensor  # (U,) sorted distinct entity ids touched: heads, candidates (and contrastive entities)
    heads: Tensor  # (B,) positions of the batch's heads
    candidates: Tensor  # (C,) positions of the candidate columns: the answer set A first, then the negatives
    correction: Tensor  # (C,) float32 subtracted from the logits: 0 on A, log(K q_c / n_c) on negatives
    answer_columns: Tensor  # (P,) candidate column of each (row, answer) pair
    contrastive: Tensor | None  # positions of the contrastive loss's entities, or None

    def to(self, device: torch.device) -> Sample:
        move = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in vars(self).items()}
        return Sample(**move)


def build_sample(
    heads: Tensor,
    answer_entities: Tensor,
    negatives: Tensor,
    log_q: Tensor,
    *,
    contrastive: Tensor | None = None,
) -> Sample:
    """The step's candidate set and touched entities (CPU tensors).

    heads: (B,) entity ids; answer_entities: (P,) the answer of each (row, answer) pair;
    negatives: (K,) the draws; log_q: (K,) log q of each draw; contrastive: entity ids for the
    contrastive loss (distinct), or None.
    """
    answer_set, answer_columns = torch.unique(answer_entities, return_inverse=True)
    neg, first, counts = _unique_with_first(negatives)
    keep = ~torch.isin(neg, answer_set)  # a drawn answer is in the sample already, exactly
    neg, counts, neg_log_q = neg[keep], counts[keep], log_q[first[keep]]
    correction = torch.cat([torch.zeros(len(answer_set), dtype=torch.float64), sampled_logit_correction(counts, neg_log_q, len(negatives))])
    cand = torch.cat([answer_set, neg])
    parts = [heads, cand] if contrastive is None else [heads, cand, contrastive]
    ids = torch.unique(torch.cat(parts))
    return Sample(
        ids=ids,
        heads=torch.searchsorted(ids, heads),
        candidates=torch.searchsorted(ids, cand),
        correction=correction.float(),
        answer_columns=answer_columns,
        contrastive=None if contrastive is None else torch.searchsorted(ids, contrastive),
    )


def _unique_with_first(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(distinct values sorted, the index of one occurrence of each, counts)."""
    values, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    first = torch.empty(len(values), dtype=torch.long).scatter_(0, inverse, torch.arange(len(x)))
    return values, first, counts


def draw_sample(
    sampler: NegativeSampler,
    heads: Tensor,
    answer_entities: Tensor,
    generator: torch.Generator | None,
    contrastive_size: int = 0,
) -> Sample:
    """Draw a step's negatives (then its contrastive entities, when contrastive_size > 0) from
    `generator` and build its Sample (CPU)."""
    negatives = sampler.draw(generator)
    contrastive = None
    if contrastive_size > 0:
        contrastive = torch.unique(torch.randint(sampler.n, (contrastive_size,), generator=generator))
    return build_sample(heads.cpu(), answer_entities.cpu(), negatives, sampler.log_q(negatives), contrastive=contrastive)


class SampledForward(nn.Module):
    """`IMF.subset_logits` as a module's forward, so that DistributedDataParallel can wrap it
    (its parameters are the model's own)."""

    def __init__(self, model: IMF) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, heads: Tensor, rel_ids: Tensor, candidates: Tensor):  # type: ignore[override]
        return self.model.subset_logits(ids, heads, rel_ids, candidates)


def sampled_training_loss(
    model: IMF,
    sample: Sample,
    rels: Tensor,
    positions: Tensor,
    cfg: TrainConfig,
    *,
    forward: Callable[..., Any] | None = None,
    share: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of one batch in sampled mode (the module docstring). sample: on the model's
    device; rels: (B,); positions: (P,) the row of each (row, answer) pair. forward: what
    computes the subset logits (a DistributedDataParallel wrapper of SampledForward(model)),
    default model.subset_logits; share as in model.training.loop.training_loss. Returns
    (loss, parts), the parts detached."""
    with torch.autocast(rels.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        logits, weights, tables = (forward or model.subset_logits)(sample.ids, sample.heads, rels, sample.candidates)
    branch_logits = [logits[b].float() - sample.correction for b in model.branches]
    log_w = torch.log(weights.float())
    values = mixture_cross_entropy(branch_logits, log_w, positions, sample.answer_columns, 0.0, bool(cfg.per_answer))
    parts: dict[str, Tensor] = {b: values[i] for i, b in enumerate(model.branches)}
    parts["fused"] = values[-1]
    loss = sum(parts.values())
    if share != 1.0:
        loss = loss * share
    if cfg.contrastive_weight > 0 and model.modalities and sample.contrastive is not None:
        ents = sample.contrastive
        names = [STRUCTURE, *model.modalities]
        emb = {b: tables[b][ents].float() for b in names}
        ids = sample.ids[ents]
        pres = {STRUCTURE: torch.ones_like(ids, dtype=torch.bool), **{m: model.present(m)[ids] for m in model.modalities}}
        parts["contrastive"] = contrastive_loss(emb, pres, cfg.temperature)
        loss = loss + cfg.contrastive_weight * parts["contrastive"]
    return loss, {k: v.detach() for k, v in parts.items()}


class LazyAdam(torch.optim.Adam):
    """Adam whose parameters with sparse gradients (the entity tables in sampled training,
    `sparse_entity_tables`) are updated on the rows of the gradient only ("lazy" Adam, as
    torch.optim.SparseAdam or TensorFlow's LazyAdam): each touched row's moments and value take
    the Adam step with the parameter's step count; an untouched row keeps its value and moments
    (dense Adam would move it by its decaying momentum). Parameters with dense gradients take
    torch's Adam step unchanged. The state has Adam's layout (step, exp_avg, exp_avg_sq per
    parameter), so checkpoints and the learning-rate scheduler work as with Adam.

    Why: at 1M entities the entity tables hold hundreds of millions of values, and a dense
    Adam step over them costs far more than the sampled forward and backward passes
    (docs/training.md); the lazy step costs rows touched x d."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        hidden = []
        try:
            for group in self.param_groups:
                if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
                    raise ValueError("LazyAdam: weight_decay, amsgrad and maximize are not supported on sparse gradients")
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    g = p.grad
                    if g is None or not g.is_sparse:
                        continue
                    g = g.coalesce()
                    rows, values = g.indices()[0], g.values()
                    state = self.state[p]
                    if not state:
                        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["step"] += 1
                    t = float(state["step"])
                    m = state["exp_avg"][rows].mul_(beta1).add_(values, alpha=1 - beta1)
                    v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
                    state["exp_avg"][rows] = m
                    state["exp_avg_sq"][rows] = v
                    denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
                    p.index_add_(0, rows, m.div_(denom), alpha=-float(group["lr"]) / (1 - beta1**t))
                    hidden.append((p, p.grad))
                    p.grad = None  # the dense step below skips it
            return super().step(closure)
        finally:
            for p, grad in hidden:
                p.grad = grad


def sparse_entity_tables(model: IMF, sparse: bool = True) -> None:
    """Make the per-entity tables (structure embedding, modality residuals) produce sparse
    gradients (rows looked up only), for LazyAdam; sparse=False restores dense ones. Scores are
    unchanged either way."""
    model.entity.sparse = sparse
    for emb in model.residual.values():
        emb.sparse = sparse


def entity_degrees(triples: np.ndarray, num_entities: int) -> np.ndarray:
    """(N,) how often each entity is a head or a tail of `triples` (T, 3)."""
    return np.bincount(np.concatenate([triples[:, 0], triples[:, 2]]), minlength=num_entities)
