"""Training losses: per-branch and fused binary cross-entropy, and the contrastive constraint.

`fusion_bce` is the hot path of training (it touches num_branches x B x N elements several
times), so it is one autograd Function with a hand-written backward instead of a chain of
elementwise ops; tests check it against plain autograd on the textbook formulas.
"""

from __future__ import annotations

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
