"""The model's math against slow, obviously correct references (loops and einsum), many seeds."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from model.network.imf import (
    IMF,
    MULTIMODAL,
    STRUCTURE,
    BilinearFusion,
    IMFConfig,
    expected_random_mrr,
)
from model.network.losses import contrastive_loss, smoothed_targets

SEEDS = [0, 1, 2, 3]


def make_model(seed: int, *, n: int = 40, nrel: int = 5, mods: dict[str, int] | None = None, **kw) -> IMF:
    torch.manual_seed(seed)
    mods = {"text": 12, "visual": 7} if mods is None else mods
    cfg = IMFConfig(num_entities=n, num_relations=nrel, modalities=mods, dim=16, relation_dim=6, **kw)
    feats = {m: torch.randn(n, f) for m, f in mods.items()}
    pres = {m: torch.rand(n) > 0.3 for m in mods}
    model = IMF(cfg, feats, pres)
    # Non-trivial batch-norm statistics and decision weights, so the references test something.
    with torch.no_grad():
        for dec in model.decoders.values():
            for bn in (dec.bn0, dec.bn1):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.normal_()
                bn.bias.normal_()
        model.alpha.normal_()
        model.relation_alpha.weight.normal_()
    return model.eval()


def slow_fusion(fusion: BilinearFusion, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Loop over entities, ranks and modalities: out = ReLU(sum_k prod_m ReLU(W_mk x_m + b_mk)),
    or sum_k prod_m tanh(W_mk x_m + b_mk) for the tanh activation."""
    act = torch.relu if fusion.activation == "relu" else torch.tanh
    n = inputs[0].shape[0]
    d_out = fusion.d_out
    out = torch.zeros(n, d_out)
    for i in range(n):
        total = torch.zeros(d_out)
        for k in range(fusion.rank):
            prod = torch.ones(d_out)
            for x, lin in zip(inputs, fusion.factors):
                w = lin.weight[k * d_out:(k + 1) * d_out]  # (d_out, d_in)
                b = lin.bias[k * d_out:(k + 1) * d_out]
                prod = prod * act(w @ x[i] + b)
            total = total + prod
        out[i] = torch.relu(total) if fusion.activation == "relu" else total
    return out


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("seed", SEEDS)
def test_bilinear_fusion_matches_loop(seed: int, activation: str) -> None:
    torch.manual_seed(seed)
    fusion = BilinearFusion(num_inputs=3, d_in=5, d_out=4, rank=2, activation=activation)
    inputs = [torch.randn(6, 5) for _ in range(3)]
    torch.testing.assert_close(fusion(inputs), slow_fusion(fusion, inputs))


def slow_query(model: IMF, branch: str, h: int, r: int) -> torch.Tensor:
    """q_b(h, r) = BN1(BN0(C_b[h]) @ reshape(R_b[r] @ W_b, (d, d))), one query at a time (eval)."""
    tables = model.entity_tables()
    rels = model.relation_embeddings(torch.tensor([r]))
    dec = model.decoders[branch]
    d = model.cfg.dim
    e = tables[branch][h]
    x = (e - dec.bn0.running_mean) / torch.sqrt(dec.bn0.running_var + dec.bn0.eps) * dec.bn0.weight + dec.bn0.bias
    core = torch.einsum("k,kij->ij", rels[branch][0], dec.core)  # (d, d)
    assert core.shape == (d, d)
    y = x @ core
    return (y - dec.bn1.running_mean) / torch.sqrt(dec.bn1.running_var + dec.bn1.eps) * dec.bn1.weight + dec.bn1.bias


@pytest.mark.parametrize("seed", SEEDS)
def test_query_vectors_match_per_query_reference(seed: int) -> None:
    model = make_model(seed)
    g = torch.Generator().manual_seed(seed)
    heads = torch.randint(0, 40, (23,), generator=g)
    rels = torch.randint(0, 10, (23,), generator=g)  # includes reciprocals (>= 5)
    with torch.no_grad():
        q = model.query_vectors(heads, rels, model.entity_tables())
        for b in model.branches:
            ref = torch.stack([slow_query(model, b, int(h), int(r)) for h, r in zip(heads, rels)])
            torch.testing.assert_close(q[b], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
@pytest.mark.parametrize("seed", SEEDS)
def test_scores_and_decision_fusion_match_loops(seed: int, output: str) -> None:
    model = make_model(seed, output=output)
    heads = torch.tensor([0, 5, 5, 39])
    rels = torch.tensor([1, 1, 7, 9])
    with torch.no_grad():
        logits, weights, p = model.score_candidates(heads, rels)
        tables = model.entity_tables()
        q = model.query_vectors(heads, rels, tables)
        for i, (h, r) in enumerate(zip(heads.tolist(), rels.tolist())):
            w_ref = torch.softmax(model.alpha + model.relation_alpha.weight[r], dim=0)
            torch.testing.assert_close(weights[i], w_ref)
            assert float(weights[i].sum()) == pytest.approx(1.0, abs=1e-6)
            s = {b: [float(q[b][i] @ tables[b][t]) for t in range(40)] for b in model.branches}
            for t in range(40):
                p_ref = 0.0
                for j, b in enumerate(model.branches):
                    assert float(logits[b][i, t]) == pytest.approx(s[b][t], rel=1e-4, abs=1e-4)
                    if output == "sigmoid":
                        prob = 1.0 / (1.0 + math.exp(-s[b][t]))
                    else:  # softmax over the 40 entities
                        prob = math.exp(s[b][t]) / sum(math.exp(x) for x in s[b])
                    p_ref += float(w_ref[j]) * prob
                assert float(p[i, t]) == pytest.approx(p_ref, rel=1e-4, abs=1e-7)
            if output == "softmax":  # a mixture of distributions sums to 1
                assert float(p[i].sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
@pytest.mark.parametrize("seed", SEEDS)
def test_candidate_scoring_equals_full_scoring(seed: int, output: str) -> None:
    model = make_model(seed, output=output)
    heads = torch.tensor([3, 8, 8])
    rels = torch.tensor([0, 2, 6])
    cand = torch.randint(0, 40, (3, 11), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full_logits, _, full_p = model.score_candidates(heads, rels)
        logits, _, p = model.score_candidates(heads, rels, cand)
    torch.testing.assert_close(p, torch.gather(full_p, 1, cand), rtol=1e-5, atol=1e-6)  # float32 logits, two kernels
    for b in model.branches:
        torch.testing.assert_close(logits[b], torch.gather(full_logits[b], 1, cand), rtol=1e-5, atol=1e-5)


def test_equal_weights_parity_mode() -> None:
    model = make_model(0, decision_fusion="equal")
    w = model.decision_weights(torch.tensor([0, 3, 9]))
    torch.testing.assert_close(w, torch.full((3, 4), 0.25))
    assert not model.alpha.requires_grad and not model.relation_alpha.weight.requires_grad


def test_branches_follow_modalities() -> None:
    assert make_model(0).branches == [STRUCTURE, "text", "visual", MULTIMODAL]
    structure_only = make_model(0, mods={})
    assert structure_only.branches == [STRUCTURE]
    with torch.no_grad():
        _, w, p = structure_only.score_candidates(torch.tensor([1]), torch.tensor([2]))
    torch.testing.assert_close(w, torch.ones(1, 1))


@pytest.mark.parametrize("residual", [True, False])
def test_missing_modality_uses_learned_vector(residual: bool) -> None:
    model = make_model(1, feature_residual=residual)
    pres = model.present("text")
    absent = int(torch.nonzero(~pres)[0])
    present = int(torch.nonzero(pres)[0])
    with torch.no_grad():
        if residual:
            model.residual["text"].weight.normal_()
        before = model.modality_embeddings("text")
        model.features_text[absent] = 100.0  # a placeholder row must have no effect
        model.features_text[present] += 1.0
        after = model.modality_embeddings("text")
    torch.testing.assert_close(before[absent], after[absent])
    assert not torch.allclose(before[present], after[present])
    expected = model.missing["text"] + (model.residual["text"].weight[absent] if residual else 0.0)
    torch.testing.assert_close(after[absent], expected)


def test_training_forward_shapes_and_gradients_reach_every_parameter() -> None:
    model = make_model(2).train()
    logits, weights, tables = model(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 0, 6, 9]))
    assert set(logits) == set(model.branches)
    assert all(v.shape == (4, 40) for v in logits.values())
    loss = sum(F.binary_cross_entropy_with_logits(v, torch.zeros_like(v)) for v in logits.values())
    loss = loss + F.binary_cross_entropy(model.fuse(logits, weights).float().clamp(1e-7, 1 - 1e-7), torch.zeros(4, 40))
    loss.backward()
    # Relation-specific weights only get gradient for the relations in the batch; all else must.
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert no_grad == [], no_grad


def test_smoothed_targets() -> None:
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(smoothed_targets(y, 0.1), torch.tensor([[0.925, 0.025, 0.025, 0.025]]))


def slow_infonce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over rows and both directions of -log softmax(sim_i / tau)[i], with explicit loops."""
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    n = a.shape[0]
    total = torch.tensor(0.0, dtype=torch.float64)
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            sims = torch.stack([(x[i] @ y[j]) / tau for j in range(n)]).double()
            total = total - (sims[i] - torch.logsumexp(sims, dim=0))
    return total / (2 * n)


@pytest.mark.parametrize("seed", SEEDS)
def test_contrastive_matches_reference_and_averages_pairs(seed: int) -> None:
    torch.manual_seed(seed)
    emb = {k: torch.randn(9, 6) for k in ("structure", "text", "visual")}
    pres = {"structure": torch.ones(9, dtype=torch.bool), "text": torch.ones(9, dtype=torch.bool), "visual": torch.rand(9) > 0.4}
    pres["visual"][:2] = True
    got = contrastive_loss(emb, pres, 0.2)
    refs = []
    for a, b in itertools.combinations(emb, 2):
        both = pres[a] & pres[b]
        refs.append(slow_infonce(emb[a][both], emb[b][both], 0.2))
    assert float(got.detach()) == pytest.approx(float(torch.stack(refs).mean()), rel=1e-5)


def test_contrastive_falls_as_modalities_align_and_gradient_does_not_vanish() -> None:
    torch.manual_seed(0)
    n, d = 256, 32
    base = torch.randn(n, d)
    noise = torch.randn(n, d)
    ones = torch.ones(n, dtype=torch.bool)
    losses = []
    for mix in (1.0, 0.7, 0.4, 0.1, 0.0):  # 0 = the text embedding equals the structure one
        text = (1 - mix) * base + mix * noise
        losses.append(float(contrastive_loss({"structure": base, "text": text}, {"structure": ones, "text": ones}, 0.1)))
    assert all(x > y for x, y in zip(losses, losses[1:])), losses
    assert losses[0] > 0.8 * torch.log(torch.tensor(float(n))).item()  # unaligned: near log(n)
    assert losses[-1] < 0.1 * losses[0]  # aligned: far below log(n)
    # Optimising the loss alone aligns randomly initialised embeddings.
    s = torch.randn(n, d, requires_grad=True)
    t = torch.randn(n, d, requires_grad=True)
    opt = torch.optim.Adam([s, t], lr=0.05)
    first = None
    for _ in range(60):
        loss = contrastive_loss({"structure": s, "text": t}, {"structure": ones, "text": ones}, 0.1)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        grad_norm = float(torch.cat([s.grad.flatten(), t.grad.flatten()]).norm())
        assert grad_norm > 1e-4  # the reference code's version has a vanishing gradient here
        opt.step()
    assert float(loss.detach()) < 0.2 * first


@pytest.mark.parametrize("batch", [8, 64, 512])
def test_contrastive_gradient_does_not_shrink_with_batch_size(batch: int) -> None:
    torch.manual_seed(batch)
    s = torch.randn(batch, 16, requires_grad=True)
    t = torch.randn(batch, 16)
    ones = torch.ones(batch, dtype=torch.bool)
    contrastive_loss({"structure": s, "text": t}, {"structure": ones, "text": ones}, 0.1).backward()
    # Per-entity gradient norm stays O(1/batch) per row * batch rows => mean row norm ~ 1/batch * batch
    row_norm = float(s.grad.norm(dim=1).mean()) * batch
    assert row_norm > 0.5


def test_contrastive_gradients_are_finite_with_absent_entities() -> None:
    torch.manual_seed(3)
    s = torch.randn(16, 8, requires_grad=True)
    t = torch.randn(16, 8, requires_grad=True)
    pres_t = torch.rand(16) > 0.5
    pres_t[:2] = True
    loss = contrastive_loss({"structure": s, "text": t}, {"structure": torch.ones(16, dtype=torch.bool), "text": pres_t}, 0.1)
    loss.backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
    assert not t.grad[~pres_t].any()  # absent entities get no gradient
    assert float(loss.detach()) == pytest.approx(float(slow_infonce(s[pres_t].detach(), t[pres_t].detach(), 0.1)), rel=1e-5)


def test_contrastive_skips_pairs_without_shared_entities() -> None:
    emb = {"structure": torch.randn(4, 3, requires_grad=True), "text": torch.randn(4, 3)}
    pres = {"structure": torch.ones(4, dtype=torch.bool), "text": torch.tensor([True, False, False, False])}
    loss = contrastive_loss(emb, pres, 0.1)
    assert float(loss.detach()) == 0.0
    loss.backward()  # still differentiable


def test_expected_random_mrr() -> None:
    assert expected_random_mrr(1) == 1.0
    assert expected_random_mrr(4) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="decision_fusion"):
        IMFConfig(num_entities=2, num_relations=1, decision_fusion="mean")
    with pytest.raises(ValueError, match="reserved"):
        IMFConfig(num_entities=2, num_relations=1, modalities={"structure": 3})


@pytest.mark.parametrize("seed", SEEDS)
def test_log_normalizers_match_logsumexp_in_any_chunking(seed: int) -> None:
    model = make_model(seed)
    heads, rels = torch.tensor([1, 7, 30]), torch.tensor([0, 4, 8])
    with torch.no_grad():
        tables = model.entity_tables()
        q = model.query_vectors(heads, rels, tables)
        for chunk in (1, 7, 40, 1000):
            got = model.log_normalizers(q, tables, chunk=chunk)
            for b in model.branches:
                ref = torch.logsumexp((q[b] @ tables[b].T).double(), dim=1)
                torch.testing.assert_close(got[b], ref, rtol=1e-6, atol=1e-5)  # float32 products of different shapes


@pytest.mark.parametrize("seed", SEEDS)
def test_compacted_model_scores_exactly_alike(seed: int) -> None:
    model = make_model(seed)
    with torch.no_grad():
        model.residual["text"].weight.normal_()  # a non-zero residual must be folded in
    compact = model.compacted()
    assert compact.cfg.stored_tables and not hasattr(compact, "features_text")
    heads, rels = torch.tensor([0, 3, 39]), torch.tensor([2, 6, 9])
    with torch.no_grad():
        _, _, p1 = model.score_candidates(heads, rels)
        _, _, p2 = compact.score_candidates(heads, rels)
    torch.testing.assert_close(p1, p2)


@pytest.mark.parametrize("seed", SEEDS)
def test_compacted_model_expands_back_to_a_trainable_one(seed: int) -> None:
    model = make_model(seed)
    with torch.no_grad():
        model.residual["text"].weight.normal_()
        model.missing["text"].normal_()
    compact = model.compacted()
    with torch.no_grad():  # stand-in for int8 rounding: the tables need not be proj + residual
        for m in compact.modalities:
            getattr(compact, f"table_{m}").add_(0.01 * torch.randn_like(getattr(compact, f"table_{m}")))
    fresh = make_model(seed + 100)  # other weights, same features and configuration
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(("features_", "present_"))}, strict=False)
    fresh.load_compacted(compact)
    assert not fresh.cfg.stored_tables and fresh.residual["text"].weight.requires_grad
    for b, table in compact.entity_tables().items():
        torch.testing.assert_close(fresh.entity_tables()[b], table, rtol=1e-5, atol=1e-5)
    heads, rels = torch.tensor([0, 3, 39]), torch.tensor([2, 6, 9])
    with torch.no_grad():
        _, _, p1 = fresh.eval().score_candidates(heads, rels)
        _, _, p2 = compact.eval().score_candidates(heads, rels)
    torch.testing.assert_close(p1, p2)
    with pytest.raises(ValueError, match="compacted source"):
        fresh.load_compacted(model)


def test_decoder_dropconnect_masks_relation_matrix_entries() -> None:
    """In training mode hidden_dropout1 zeroes entries of M(r) (one mask per batch): the output
    equals x @ (M(r) * mask) for some 0/(1/keep) mask shared by every row of the batch."""
    torch.manual_seed(0)
    cfg = IMFConfig(num_entities=10, num_relations=2, dim=6, relation_dim=3, input_dropout=0.0, hidden_dropout1=0.5, hidden_dropout2=0.0)
    dec = IMF(cfg).decoders[STRUCTURE].train()
    dec.bn0 = torch.nn.Identity()
    dec.bn1 = torch.nn.Identity()
    x = torch.randn(5, 6)
    rel = torch.randn(1, 3)
    torch.manual_seed(1)
    out = dec(x, rel, torch.zeros(5, dtype=torch.long))
    full = x @ torch.einsum("i,ijk->jk", rel[0], dec.core)
    torch.manual_seed(1)
    mask = torch.empty(1, 6, 6).bernoulli_(0.5).div_(0.5)[0]
    torch.testing.assert_close(out, x @ (torch.einsum("i,ijk->jk", rel[0], dec.core) * mask), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, full)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_widened_relations_score_alike_and_learn(seed: int, activation: str) -> None:
    """A model widened to a larger d_r scores every query exactly as the source does, and its new
    relation dimensions take part in learning (their core slices get a gradient)."""
    small = make_model(seed, fusion_activation=activation)
    with torch.no_grad():
        for dec in small.decoders.values():
            dec.core.normal_()
    torch.manual_seed(seed + 50)
    big = IMF(IMFConfig(**{**small.cfg.to_dict(), "relation_dim": 10}))
    big.load_state_dict({k: v for k, v in small.state_dict().items() if k.startswith(("features_", "present_"))}, strict=False)
    big.widen_relations(small)
    big.eval()
    heads, rels = torch.arange(0, 40, 4), torch.arange(10)
    with torch.no_grad():
        l1, w1, p1 = small.score_candidates(heads, rels)
        l2, w2, p2 = big.score_candidates(heads, rels)
    for b in small.branches:
        torch.testing.assert_close(l2[b], l1[b], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(p2, p1)
    assert big.relation[STRUCTURE].weight[:, 6:].abs().sum() > 0  # new coordinates are not all zero
    big.train()
    logits, _, _ = big(heads, rels)
    sum(v.logsumexp(dim=1).sum() for v in logits.values()).backward()
    for b in big.branches:
        assert big.decoders[b].core.grad[6:].abs().sum() > 0, b
    with pytest.raises(ValueError, match="only grow"):
        small.widen_relations(big)
    other = IMF(IMFConfig(**{**small.cfg.to_dict(), "relation_dim": 10, "dim": 8}))
    with pytest.raises(ValueError, match="dim"):
        other.widen_relations(small)


def test_embeddings_draw_what_torch_draws() -> None:
    """IMF builds its embeddings without their init on the meta device, and with torch's own
    N(0, 1) draws elsewhere: a seeded model is the one it always was."""
    from model.network.imf import _embedding

    torch.manual_seed(3)
    want = torch.nn.Embedding(7, 5).weight.detach().clone()
    torch.manual_seed(3)
    got = _embedding(7, 5).weight.detach()
    assert torch.equal(got, want)
    with torch.device("meta"):
        m = IMF(IMFConfig(num_entities=10, num_relations=2, modalities={"text": 4}, dim=8))
    assert m.entity.weight.is_meta


def test_released_entity_rows_leave_a_model_that_still_answers() -> None:
    model = make_model(0).eval()
    tables = {b: t.detach().clone() for b, t in model.entity_tables().items()}
    heads, rels = torch.tensor([0, 5, 9]), torch.tensor([1, 2, 7])
    with torch.no_grad():
        before = model.query_vectors(heads, rels, tables)
        rows = sum(t.numel() * t.element_size() for n, t in [*model.named_parameters(), *model.named_buffers()] if n.startswith(IMF.ENTITY_ROW_PREFIXES))
        assert model.release_entity_rows() == rows > 0
        after = model.query_vectors(heads, rels, tables)
    for b in model.branches:
        assert torch.equal(before[b], after[b])
    assert model.entity.weight.shape == (0, 16)
    with pytest.raises(RuntimeError, match="released"):
        model.entity_tables()
