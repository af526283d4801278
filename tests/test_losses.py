"""The fused loss Function against plain autograd on the textbook formulas, several seeds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.losses import fusion_bce


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
