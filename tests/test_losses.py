"""The fused loss Function against plain autograd on the textbook formulas, several seeds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.network.losses import fusion_bce, mixture_cross_entropy


def reference(logits: list[torch.Tensor], weights: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    branch = [F.binary_cross_entropy_with_logits(s, target) for s in logits]
    p = sum(weights[:, i:i + 1] * torch.sigmoid(s) for i, s in enumerate(logits))
    fused = F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), target)
    return torch.stack([*branch, fused])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("nb", [1, 4])
def test_fusion_bce_matches_autograd(seed: int, nb: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B, N = 5, 13
    logits = [(torch.randn(B, N, generator=g, dtype=torch.float64) * 4).requires_grad_() for _ in range(nb)]
    raw = torch.randn(B, nb, generator=g, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(B, N, generator=g, dtype=torch.float64) < 0.2).double() * 0.9 + 0.1 / N
    coeffs = torch.randn(nb + 1, generator=g, dtype=torch.float64)  # arbitrary upstream gradient

    w = torch.softmax(raw, dim=1)
    got = fusion_bce(logits, w, target)
    # fusion_bce computes in float32; compare with a float64 reference at float32 tolerance
    ref = reference(logits, w, target)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    g_got = torch.autograd.grad((got.double() * coeffs).sum(), [*logits, raw])
    w2 = torch.softmax(raw, dim=1)
    g_ref = torch.autograd.grad((reference(logits, w2, target) * coeffs).sum(), [*logits, raw])
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-7)


def test_fusion_bce_saturated_probabilities_do_not_explode() -> None:
    logits = [torch.full((2, 3), 40.0, requires_grad=True), torch.full((2, 3), -40.0, requires_grad=True)]
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    out = fusion_bce(logits, w, target)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(t.grad).all() for t in (*logits, w))


def dense_mixture_reference(logits: list[torch.Tensor], weights: torch.Tensor, labels: torch.Tensor, eps: float, per_answer: bool = False) -> torch.Tensor:
    """Textbook formulas on dense (B, N) matrices: y = (1 - eps) labels / |labels| + eps / N;
    per branch -sum y log softmax(s_b); mixture -sum y log sum_b w_b softmax(s_b)."""
    n = labels.shape[1]
    y = (1 - eps) * labels / labels.sum(dim=1, keepdim=True) + eps / n
    # per_answer: one example per training triple, (query, answer), each with the query's target
    rows = labels.sum(dim=1) if per_answer else torch.ones(labels.shape[0], dtype=labels.dtype)
    branch = [(-(y * torch.log_softmax(s, dim=1)).sum(dim=1) * rows).sum() / rows.sum() for s in logits]
    p = sum(weights[:, i:i + 1] * torch.softmax(s, dim=1) for i, s in enumerate(logits))
    mix = (-(y * torch.log(p)).sum(dim=1) * rows).sum() / rows.sum()
    return torch.stack([*branch, mix])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("nb", [1, 4])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("per_answer", [False, True])
def test_mixture_cross_entropy_matches_dense_reference(seed: int, nb: int, eps: float, per_answer: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    B, N = 6, 17
    logits = [(torch.randn(B, N, generator=g, dtype=torch.float64) * 3).requires_grad_() for _ in range(nb)]
    raw = torch.randn(B, nb, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.rand(B, N, generator=g) < 0.2
    labels[torch.arange(B), torch.randint(0, N, (B,), generator=g)] = True  # every row has an answer
    pos, ans = torch.nonzero(labels, as_tuple=True)
    coeffs = torch.randn(nb + 1, generator=g, dtype=torch.float64)

    got = mixture_cross_entropy(logits, torch.log_softmax(raw, dim=1), pos, ans, eps, per_answer)
    ref = dense_mixture_reference(logits, torch.softmax(raw, dim=1), labels.double(), eps, per_answer)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    g_got = torch.autograd.grad((got.double() * coeffs).sum(), [*logits, raw])
    g_ref = torch.autograd.grad((dense_mixture_reference(logits, torch.softmax(raw, dim=1), labels.double(), eps, per_answer) * coeffs).sum(), [*logits, raw])
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6)


def test_mixture_cross_entropy_is_finite_for_confident_branches() -> None:
    logits = [torch.tensor([[80.0, -80.0, 0.0]], requires_grad=True), torch.tensor([[-80.0, 80.0, 0.0]], requires_grad=True)]
    log_w = torch.log(torch.tensor([[0.999, 0.001]])).requires_grad_()
    out = mixture_cross_entropy(logits, log_w, torch.tensor([0]), torch.tensor([1]))
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(t.grad).all() for t in (*logits, log_w))
    # the mixture is right where one branch is: its loss is far below the wrong branch's
    assert float(out[2].detach()) < float(out[0].detach())
