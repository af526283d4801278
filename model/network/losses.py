"""Training losses: per-branch and fused cross-entropy (the default) or binary cross-entropy (the
paper's, for parity), and the contrastive constraint.

Cross-entropy (`mixture_cross_entropy`): each branch b is a distribution over the N entities,
P_b(t | h, r) = softmax_t s_b(h, r, t), and the decision fusion is their mixture
p(t | h, r) = sum_b w_b(r) P_b(t | h, r). The target of a query spreads mass 1 evenly over its
training answers. The loss is sum_b CE(P_b) + CE(p): every branch must predict on its own (so
`/explain` can show what each one says), and the mixture learns which to trust per relation.

Sampled softmax (`sampled_logit_correction`, model.training.sampling): the same cross-entropy
over a shared sample of candidates instead of all N entities, with the logQ correction.

`fusion_bce` is the hot path of training (it touches num_branches x B x N elements several
times), so it is one autograd Function with a hand-written backward instead of a chain of
elementwise ops; tests check it against plain autograd on the textbook formulas.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

P_EPS = 1e-7  # clamp of the fused probability inside its log


def smoothed_targets(labels: Tensor, smoothing: float) -> Tensor:
    """Label smoothing for 1-N scoring: y' = (1 - eps) y + eps / N. labels: (B, N) in {0, 1}."""
    n = labels.shape[-1]
    return labels * (1.0 - smoothing) + smoothing / n


def contrastive_loss(embeddings: dict[str, Tensor], present: dict[str, Tensor], temperature: float) -> Tensor:
    """InfoNCE between the modality embeddings of the same entities.

    embeddings[b]: (n, d) for the same n entities in every branch; present[b]: (n,) bool (entities
    lacking a modality take no part in that modality's pairs). For every pair of branches (a, b)
    the positives are the same entity in both, the negatives every other shared entity, in both
    directions (a->b and b->a), with cosine similarity / temperature. A pair with fewer than two
    shared entities contributes 0. Returns the mean over pairs.

    Unlike the reference code, each row is normalised over its own row of candidates, so the
    gradient does not vanish as the batch grows. Absent entities are masked, not dropped, so the
    shapes stay static and a GPU is never synchronised here.
    """
    names = list(embeddings)
    losses = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = present[a] & present[b]  # (n,)
            za = F.normalize(embeddings[a], dim=-1)
            zb = F.normalize(embeddings[b], dim=-1)
            sim = (za @ zb.T) / temperature  # (n, n), positives on the diagonal
            # A large finite negative, not -inf: an all-masked row must stay finite, or its
            # (discarded) value would still send NaN gradients back through logsumexp.
            sim = sim.masked_fill(~(both[:, None] & both[None, :]), -1e4)
            diag = torch.diagonal(sim)
            rows = torch.logsumexp(sim, dim=1) - diag  # a -> b
            cols = torch.logsumexp(sim, dim=0) - diag  # b -> a
            count = both.sum()
            per_entity = torch.where(both, rows + cols, torch.zeros_like(rows))  # absent entities dropped
            loss = per_entity.sum() / (2 * count.clamp(min=1))
            losses.append(torch.where(count >= 2, loss, torch.zeros_like(loss)))
    if not losses:
        first = next(iter(embeddings.values()))
        return first.sum() * 0.0
    return torch.stack(losses).mean()


class _FusionBCE(torch.autograd.Function):
    """See `fusion_bce`. Written for few passes over the (B, N) matrices: sums of products are
    dot products (no temporary), and updates happen in place."""

    @staticmethod
    def forward(ctx, weights: Tensor, target: Tensor, *logits: Tensor) -> Tensor:  # type: ignore[override]
        count = target.numel()
        y = target.reshape(-1)
        sig = []
        losses = []
        p = torch.zeros_like(target)
        for i, s in enumerate(logits):
            # BCE with logits, summed: sum(softplus(s)) - sum(y * s)
            losses.append((F.softplus(s).sum() - torch.dot(y, s.reshape(-1))) / count)
            g = torch.sigmoid(s)
            p.addcmul_(weights[:, i:i + 1], g)
            sig.append(g)
        pc = p.clamp_(P_EPS, 1 - P_EPS)  # p is not needed unclamped
        log_p = torch.log(pc)
        log_1mp = torch.log1p(-pc)
        # sum(y log p + (1 - y) log(1 - p)) = y.log_p + sum(log_1mp) - y.log_1mp
        ll = torch.dot(y, log_p.reshape(-1)) + log_1mp.sum() - torch.dot(y, log_1mp.reshape(-1))
        losses.append(-ll / count)
        ctx.save_for_backward(weights, target, pc, *sig)
        return torch.stack(losses)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        weights, target, pc, *sig = ctx.saved_tensors
        count = target.numel()
        nb = len(sig)
        # d fused / d p = (p - y) / (p (1 - p)), zero where the clamp was active
        dp = pc - target
        dp.div_(pc * (1 - pc))
        dp.mul_(((pc > P_EPS) & (pc < 1 - P_EPS)).to(dp.dtype) * (grad[nb] / count))
        grads = []
        dweights = torch.empty_like(weights)
        for i, g in enumerate(sig):
            dweights[:, i] = torch.einsum("bn,bn->b", dp, g)
            # d/ds_i = c_i (sigma_i - y) + dp w_i sigma_i (1 - sigma_i); sigma_i is reused in place
            ds = dp * weights[:, i:i + 1]
            ds.mul_(g).mul_(1 - g)
            ds.add_(g - target, alpha=float(grad[i]) / count)
            grads.append(ds)
        return (dweights, None, *grads)


def fusion_bce(logits: list[Tensor], weights: Tensor, target: Tensor) -> Tensor:
    """Per-branch BCE-with-logits and the fused BCE of p = sum_b w_b sigmoid(s_b), in one pass.

    logits: nb tensors (B, N); weights: (B, nb); target: (B, N) in [0, 1] (smoothed labels).
    Returns (nb + 1,): the mean BCE of each branch, then the mean BCE of p (clamped to
    [1e-7, 1 - 1e-7]). Gradients flow to every logit tensor and to the weights.
    """
    return _FusionBCE.apply(weights.float(), target.float(), *(s.float() for s in logits))


def mixture_cross_entropy(
    logits: list[Tensor],
    log_weights: Tensor,
    positions: Tensor,
    answers: Tensor,
    smoothing: float = 0.0,
    per_answer: bool = False,
) -> Tensor:
    """Per-branch 1-vs-all cross-entropy and the cross-entropy of their mixture, in one pass.

    logits: nb tensors (B, N); log_weights: (B, nb) log w_b(r); (positions, answers): (P,) each,
    the training answers of the batch's queries as (row, entity) pairs (every row has at least
    one). The target of row i is y_i = (1 - eps) * uniform over its answers + eps / N.
    Returns (nb + 1,): the mean over rows of -sum_t y_t log P_b(t), then of -sum_t y_t log p(t).

    per_answer: weight each row by its number of answers (the mean over the P training triples
    instead of over the B queries). That is the per-triple 1-vs-all cross-entropy (each triple
    one example, its query's other answers left in the normaliser), computed once per query;
    the evaluation also counts triples, so a query with many answers weighs as much as they do.

    Only the P answer entries of the mixture are needed when eps = 0 (log p at the answers), so
    the mixture costs O(P * nb) on top of the branches' logsumexp, not another pass over B x N.
    """
    b_rows = logits[0].shape[0]
    counts = torch.bincount(positions, minlength=b_rows).float()  # (B,) answers per row
    # (B,) weight of each row's cross-entropy; they sum to B either way, so the loss scale stays.
    row_weight = counts * (b_rows / counts.sum()) if per_answer else torch.ones_like(counts)
    pair_weight = (1.0 - smoothing) * row_weight[positions] / counts[positions]  # (P,) target mass of each answer
    losses = []
    log_probs_at_answers = []  # (P,) per branch: log P_b(answer)
    lses = []
    for s in logits:
        s = s.float()
        lse = torch.logsumexp(s, dim=1)  # (B,)
        at = s[positions, answers] - lse[positions]  # (P,)
        ce = -(pair_weight * at).sum()
        if smoothing > 0:
            ce = ce + smoothing * (row_weight * (lse - s.mean(dim=1))).sum()
        losses.append(ce / b_rows)
        log_probs_at_answers.append(at)
        lses.append(lse)
    lw = log_weights.float()
    # log p(answer) = logsumexp_b (log w_b + log P_b(answer))
    mix_at = torch.logsumexp(torch.stack([lw[positions, i] + at for i, at in enumerate(log_probs_at_answers)]), dim=0)
    mix = -(pair_weight * mix_at).sum()
    if smoothing > 0:
        # The uniform part needs log p at every entity: one (nb, B, N) logsumexp.
        full = torch.stack([lw[:, i:i + 1] + s.float() - lse[:, None] for i, (s, lse) in enumerate(zip(logits, lses, strict=True))])
        mix = mix - smoothing * (row_weight * torch.logsumexp(full, dim=0).mean(dim=1)).sum()
    losses.append(mix / b_rows)
    return torch.stack(losses)


def sampled_logit_correction(counts: Tensor, log_q: Tensor, draws: int) -> Tensor:
    """The logQ correction of sampled negatives, subtracted from their logits: (C,) for C
    distinct negatives.

    counts: (C,) how often each distinct negative came up among the `draws` = K draws with
    replacement from the proposal q; log_q: (C,) log q of each. The correction is
    log(K q_c / n_c), the log of the expected count over the observed count, so that

        sum_c n_c exp(s_c) / (K q_c) = sum_c exp(s_c - log(K q_c / n_c))

    is an unbiased estimate of sum_e exp(s_e) over the entities that are not answers of the
    batch (those are always in the sample, uncorrected, and their draws are dropped). With
    K = N uniform draws hitting every entity once (q = 1/N, n = 1) the correction is 0 and the
    sampled softmax is the full one.
    """
    return math.log(draws) + log_q.double() - torch.log(counts.double())
