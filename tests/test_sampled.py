"""Sampled training (model.training.sampling): the sampled softmax against a slow reference, the
logQ correction (a sample of every entity once is the full softmax), gradients only on the rows
a step touches, determinism, the mode chosen by the graph's size, learning on a real slice, and
two processes sharing the sample."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from model.kg.dataset import load_dataset
from model.network.imf import IMF, IMFConfig, expected_random_mrr
from model.network.losses import sampled_logit_correction
from model.training import sizing
from model.training.config import TrainConfig
from model.training.loop import train, training_loss
from model.training.sampling import (
    LazyAdam,
    NegativeSampler,
    build_sample,
    draw_sample,
    entity_degrees,
    sampled_training_loss,
    sparse_entity_tables,
)
from tests.helpers import free_port

N, NB_MODS = 40, 2


def _model(seed: int = 0, output: str = "softmax") -> IMF:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    feats = {"text": torch.randn(N, 6, generator=g), "numeric": torch.randn(N, 3, generator=g)}
    present = {"text": torch.ones(N, dtype=torch.bool), "numeric": torch.rand(N, generator=g) > 0.3}
    cfg = IMFConfig(num_entities=N, num_relations=3, modalities={"text": 6, "numeric": 3}, dim=8, relation_dim=4, output=output)
    model = IMF(cfg, feats, present)
    with torch.no_grad():  # residuals start at zero: make every table row entity-specific
        for emb in model.residual.values():
            emb.weight.normal_(0, 0.3, generator=g)
    return model.eval()  # no dropout: the same function twice


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    heads = torch.tensor([0, 5, 5, 17, 33])
    rels = torch.tensor([0, 1, 4, 2, 0])
    pos = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])  # rows with 2, 1, 3, 1, 1 answers
    ans = torch.tensor([3, 9, 9, 1, 2, 30, 0, 3])
    return heads, rels, pos, ans


CFG = TrainConfig(dataset="x", negatives=8)


def test_the_correction_is_log_expected_over_observed_count() -> None:
    counts = torch.tensor([1, 3, 2])
    log_q = torch.log(torch.tensor([0.1, 0.01, 0.5], dtype=torch.float64))
    got = sampled_logit_correction(counts, log_q, 100)
    want = torch.tensor([math.log(100 * 0.1 / 1), math.log(100 * 0.01 / 3), math.log(100 * 0.5 / 2)], dtype=torch.float64)
    assert torch.allclose(got, want)


@pytest.mark.parametrize("per_answer", [True, False])
def test_every_entity_sampled_once_is_the_one_vs_all_loss(per_answer: bool) -> None:
    """q = 1/N, K = N draws that hit each entity once: correction 0, the full softmax."""
    model = _model()
    heads, rels, pos, ans = _batch()
    cfg = dataclasses.replace(CFG, per_answer=per_answer)
    negs = torch.randperm(N, generator=torch.Generator().manual_seed(3))
    sample = build_sample(heads, ans, negs, torch.full((N,), -math.log(N), dtype=torch.float64))
    assert torch.equal(sample.ids, torch.arange(N)) and len(sample.candidates) == N
    assert float(sample.correction.abs().max()) < 1e-6
    full, full_parts = training_loss(model, heads, rels, (pos, ans), dataclasses.replace(cfg, negatives=0))
    got, parts = sampled_training_loss(model, sample, rels, pos, cfg)
    assert float(got.detach()) == pytest.approx(float(full.detach()), rel=1e-5)
    for k in full_parts:
        assert float(parts[k]) == pytest.approx(float(full_parts[k]), rel=1e-5, abs=1e-6)


def _reference_loss(model: IMF, heads, rels, pos, ans, negs, q: np.ndarray, per_answer: bool) -> float:
    """The sampled loss with explicit loops over rows, branches, entities (float64)."""
    with torch.no_grad():
        tables = {b: t.detach() for b, t in model.entity_tables().items()}
        queries = model.query_vectors(heads, rels, tables)
        w = model.decision_weights(rels).double()
    k = len(negs)
    answer_set = sorted(set(ans.tolist()))
    counts: dict[int, int] = {}
    for e in negs.tolist():
        counts[e] = counts.get(e, 0) + 1
    b_rows = len(heads)
    per_row = [[a for p, a in zip(pos.tolist(), ans.tolist()) if p == i] for i in range(b_rows)]
    total_answers = len(ans)
    losses = [0.0] * (len(model.branches) + 1)
    for i in range(b_rows):
        row_w = len(per_row[i]) * b_rows / total_answers if per_answer else 1.0
        log_p = {}  # branch -> {answer: log P}
        for bi, b in enumerate(model.branches):
            s = [float(queries[b][i].double() @ tables[b][e].double()) for e in range(N)]
            z = sum(math.exp(s[e]) for e in answer_set)
            z += sum(c * math.exp(s[e]) / (k * q[e]) for e, c in counts.items() if e not in answer_set)
            log_p[b] = {a: s[a] - math.log(z) for a in per_row[i]}
            for a in per_row[i]:
                losses[bi] -= row_w / len(per_row[i]) * log_p[b][a]
        for a in per_row[i]:
            mix = sum(float(w[i, bi]) * math.exp(log_p[b][a]) for bi, b in enumerate(model.branches))
            losses[-1] -= row_w / len(per_row[i]) * math.log(mix)
    return sum(losses) / b_rows


@pytest.mark.parametrize("distribution", ["uniform", "frequency"])
@pytest.mark.parametrize("per_answer", [True, False])
def test_sampled_loss_matches_a_slow_reference(distribution: str, per_answer: bool) -> None:
    model = _model(1)
    heads, rels, pos, ans = _batch()
    degrees = np.random.default_rng(0).integers(0, 50, N)
    sampler = NegativeSampler(N, 25, distribution, degrees)
    negs = sampler.draw(torch.Generator().manual_seed(0))
    assert len(set(negs.tolist()) - set(ans.tolist())) < 25  # duplicates or answers among the draws
    sample = build_sample(heads, ans, negs, sampler.log_q(negs))
    got, _ = sampled_training_loss(model, sample, rels, pos, dataclasses.replace(CFG, per_answer=per_answer))
    q = np.full(N, 1.0 / N) if distribution == "uniform" else np.exp(sampler.log_q_all.numpy())
    assert float(got.detach()) == pytest.approx(_reference_loss(model, heads, rels, pos, ans, negs, q, per_answer), rel=1e-4)


def test_frequency_sampling_follows_the_degree() -> None:
    degrees = np.zeros(N, dtype=np.int64)
    degrees[7] = 10_000
    s = NegativeSampler(N, 4000, "frequency", degrees)
    draws = s.draw(torch.Generator().manual_seed(0))
    share = float((draws == 7).float().mean())
    q7 = float(torch.exp(s.log_q(torch.tensor([7]))))
    assert q7 > 0.9 and abs(share - q7) < 0.02
    assert entity_degrees(np.array([[0, 0, 1], [1, 1, 1]]), 3).tolist() == [1, 3, 0]


def test_a_step_touches_only_the_sampled_rows() -> None:
    model = _model(2).train()
    heads, rels, pos, ans = _batch()
    sample = draw_sample(NegativeSampler(N, 6), heads, ans, torch.Generator().manual_seed(1))
    loss, _ = sampled_training_loss(model, sample, rels, pos, CFG)
    loss.backward()
    touched = torch.zeros(N, dtype=torch.bool)
    touched[sample.ids] = True
    assert 0 < int(touched.sum()) < N
    for name, table in [("structure", model.entity.weight), *((m, model.residual[m].weight) for m in model.modalities)]:
        g = table.grad
        assert g is not None, name
        assert float(g[~touched].abs().max()) == 0.0, name
        assert float(g[touched].abs().sum(dim=1).min()) > 0.0, name  # every touched row learns


def test_lazy_adam_is_adam_on_the_rows_touched() -> None:
    """Every row touched at every step: the same steps as torch's Adam (dense gradients). Rows
    never touched keep their value (dense Adam would move them by momentum after a first step)."""
    torch.manual_seed(0)
    dense, lazy = torch.nn.Embedding(10, 4), torch.nn.Embedding(10, 4, sparse=True)
    lazy.load_state_dict(dense.state_dict())
    lin = torch.nn.Linear(4, 1)  # a dense parameter alongside, in the same optimizer
    lin2 = torch.nn.Linear(4, 1)
    lin2.load_state_dict(lin.state_dict())
    opt_d = torch.optim.Adam([*dense.parameters(), *lin.parameters()], lr=0.1)
    opt_l = LazyAdam([*lazy.parameters(), *lin2.parameters()], lr=0.1)
    for step in range(4):
        ids = torch.tensor([3, 1, 0, 2, 4, 5, 6, 7, 8, 9, 3])
        for emb, head, opt in ((dense, lin, opt_d), (lazy, lin2, opt_l)):
            opt.zero_grad()
            (head(emb(ids)) ** 2).sum().backward()
            opt.step()
        assert torch.allclose(dense.weight, lazy.weight, atol=1e-6), step
        assert torch.allclose(lin.weight, lin2.weight, atol=1e-6)
    before = lazy.weight.detach().clone()
    opt_l.zero_grad()
    (lin2(lazy(torch.tensor([1, 2]))) ** 2).sum().backward()
    opt_l.step()
    moved = (lazy.weight.detach() != before).any(dim=1)
    assert moved.tolist() == [i in (1, 2) for i in range(10)]


def test_sampled_training_keeps_the_model_dense(tiny_dataset: Path) -> None:
    """The sparse gradients of sampled training are switched off in the model it returns."""
    ds = load_dataset(tiny_dataset)
    res = train(TrainConfig(dataset=str(tiny_dataset), epochs=1, batch_size=4, negatives=3), ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=4))
    assert not res.model.entity.sparse and not any(e.sparse for e in res.model.residual.values())
    model = _model()
    sparse_entity_tables(model)
    assert model.entity.sparse and all(e.sparse for e in model.residual.values())


def test_samples_and_runs_are_deterministic_for_a_seed(tiny_dataset: Path) -> None:
    heads, _, _, ans = _batch()
    sampler = NegativeSampler(N, 10)
    a = draw_sample(sampler, heads, ans, torch.Generator().manual_seed(4), contrastive_size=5)
    b = draw_sample(sampler, heads, ans, torch.Generator().manual_seed(4), contrastive_size=5)
    c = draw_sample(sampler, heads, ans, torch.Generator().manual_seed(5), contrastive_size=5)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in vars(a))
    assert not torch.equal(a.ids, c.ids)
    ds = load_dataset(tiny_dataset)
    cfg = TrainConfig(dataset=str(tiny_dataset), epochs=3, batch_size=4, seed=7, negatives=3, contrastive_weight=0.1, contrastive_size=4)
    mcfg = IMFConfig(dim=8, relation_dim=4)
    r1 = train(cfg, ds, progress=False, model_config=mcfg)
    r2 = train(cfg, ds, progress=False, model_config=mcfg)
    s1, s2 = r1.model.state_dict(), r2.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    full = train(dataclasses.replace(cfg, negatives=0), ds, progress=False, model_config=mcfg).model.state_dict()
    assert not all(torch.equal(s1[k], full[k]) for k in s1)


def test_sampled_training_refuses_losses_that_need_every_logit() -> None:
    with pytest.raises(ValueError, match="sampled training"):
        TrainConfig(negatives=16, loss="bce")
    with pytest.raises(ValueError, match="sampled training"):
        TrainConfig(negatives=16, label_smoothing=0.1)
    assert TrainConfig(negatives=None, loss="bce").negatives is None  # auto: 1-vs-all there


def test_auto_picks_the_mode_by_graph_size_and_says_so(tiny_dataset: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_dataset(tiny_dataset)
    cfg = TrainConfig(dataset=str(tiny_dataset), epochs=1, batch_size=4)
    with caplog.at_level(logging.INFO, logger="model.training.loop"):
        small = train(cfg, ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=4))
    assert small.train_config.negatives == 0
    assert "training mode (--negatives auto)" in caplog.text and "1-vs-all" in caplog.text
    caplog.clear()
    monkeypatch.setattr(sizing, "SAMPLED_MIN_ENTITIES", 3)
    with caplog.at_level(logging.INFO, logger="model.training.loop"):
        big = train(cfg, ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=4))
    assert big.train_config.negatives == sizing.DEFAULT_NEGATIVES
    assert "sampled softmax" in caplog.text and "> 3" in caplog.text


def test_sampled_training_learns_on_a_real_slice(fb15k_slice: Path) -> None:
    """600 FB15k-237 entities, 64 negatives per step (about a tenth of them): validation MRR
    rises over the epochs, far above a random ranker's."""
    ds = load_dataset(fb15k_slice)
    cfg = TrainConfig(dataset=str(fb15k_slice), epochs=4, batch_size=128, lr=0.01, seed=0, negatives=64, patience=10)
    res = train(cfg, ds, progress=False, model_config=IMFConfig(dim=32, relation_dim=16))
    mrrs = [h["valid_mrr"] for h in res.history]
    assert mrrs[-1] > mrrs[0] + 0.02, mrrs
    assert mrrs[-1] > 10 * expected_random_mrr(ds.num_entities), mrrs


# ----------------------------------------------------------------------------- two processes


def _rank(rank: int, world: int, port: int, dataset: str, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "WORLD_SIZE": str(world), "IMF_DIST_TIMEOUT_S": "180"})
    torch.set_num_threads(1)
    from model.training.distributed import session
    from model.training.loop import train as train_

    with session("cpu"):
        cfg = TrainConfig(dataset=dataset, epochs=2, batch_size=37, lr=0.01, seed=5, negatives=50, contrastive_weight=0.1, contrastive_size=16)
        res = train_(cfg, progress=False, model_config=IMFConfig(dim=8, relation_dim=4))
        torch.save({"model": res.model.state_dict(), "history": res.history}, Path(out) / f"rank{rank}.pt")


def test_two_processes_share_the_sample_and_stay_in_step(fb15k_slice: Path, tmp_path: Path) -> None:
    """DistributedDataParallel around the subset scoring: both ranks end with the same weights
    (gradients all-reduced), which moved, and rank 0 validated every epoch."""
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(2, free_port(), str(fb15k_slice), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    assert [h["epoch"] for h in r0["history"]] == [1, 2] and all(math.isfinite(h["loss"]) for h in r0["history"])
    assert "valid_mrr" in r0["history"][-1]


def test_a_sampled_run_resumes_exactly(tiny_dataset: Path, tmp_path: Path) -> None:
    """The negatives' generator and LazyAdam's state are in the checkpoint: 1 epoch, then
    resumed to 3, ends at the weights of 3 epochs in one go."""
    ds = load_dataset(tiny_dataset)
    cfg = TrainConfig(dataset=str(tiny_dataset), epochs=3, batch_size=4, seed=2, negatives=3, patience=10)
    mcfg = IMFConfig(dim=8, relation_dim=4)
    whole = train(cfg, ds, progress=False, model_config=mcfg, run_dir=tmp_path / "whole")
    train(dataclasses.replace(cfg, epochs=1), ds, progress=False, model_config=mcfg, run_dir=tmp_path / "part")
    resumed = train(cfg, ds, progress=False, model_config=mcfg, run_dir=tmp_path / "part", resume=True)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
