"""Training: batch assembly, determinism, parameter validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.kg.dataset import load_dataset
from model.evaluation.ranking import filtered_ranks
from model.network.imf import IMFConfig
from model.training.config import TrainConfig
from model.training.loop import batch_order, resolve_precision, train


@pytest.mark.parametrize("groups", [0, 1, 4, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_batch_order_covers_every_query_once(groups: int, seed: int) -> None:
    rng_rel = np.random.default_rng(seed)
    rels = rng_rel.choice(20, size=1000, p=np.r_[0.5, np.full(19, 0.5 / 19)])  # skewed, like real KGs
    batches = batch_order(rels, 64, groups, np.random.default_rng(seed))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert all(len(b) == 64 for b in batches[:-1])
    if groups:
        # chunks of 64 // groups queries share a relation, so a batch holds few relations
        distinct = [len(np.unique(rels[b])) for b in batches[:-1]]
        assert np.mean(distinct) <= groups + 2
    again = batch_order(rels, 64, groups, np.random.default_rng(seed))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_train_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="lr=-1"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.5)


def test_training_is_deterministic_for_a_seed(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    cfg = TrainConfig(dataset=str(tiny_dataset), epochs=3, batch_size=4, seed=7, patience=5)
    a = train(cfg, ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=4))
    b = train(cfg, ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=4))
    c = train(TrainConfig(dataset=str(tiny_dataset), epochs=3, batch_size=4, seed=8), ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=4))
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.valid_metrics["mrr"] == b.valid_metrics["mrr"]
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_time_budget_stops_training_and_keeps_a_model(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    cfg = TrainConfig(dataset=str(tiny_dataset), epochs=10_000, batch_size=2, max_minutes=0.02, patience=10_000)
    result = train(cfg, ds, progress=False, model_config=IMFConfig(dim=4, relation_dim=2))
    assert result.stopped_by == "time budget"
    assert result.epochs_run < 10_000
    assert result.best_epoch >= 1


def test_uniform_batches_mix_relations() -> None:
    """groups=0 (the default) draws batches uniformly: each holds about as many distinct
    relations as a uniform sample of that size, far more than relation-grouped batches."""
    rng_rel = np.random.default_rng(3)
    rels = rng_rel.choice(200, size=20_000, p=np.r_[0.3, np.full(199, 0.7 / 199)])
    freq = np.bincount(rels, minlength=200) / len(rels)
    expected = float(np.sum(1 - (1 - freq) ** 256))  # distinct relations in a uniform sample of 256
    uniform = batch_order(rels, 256, 0, np.random.default_rng(0))
    grouped = batch_order(rels, 256, 8, np.random.default_rng(0))
    mean_uniform = np.mean([len(np.unique(rels[b])) for b in uniform[:-1]])
    mean_grouped = np.mean([len(np.unique(rels[b])) for b in grouped[:-1]])
    assert mean_uniform == pytest.approx(expected, rel=0.05)
    assert mean_grouped < 0.3 * mean_uniform
    assert TrainConfig().relation_groups == 0


@pytest.mark.parametrize("q", [65, 129, 64, 1])
def test_no_batch_of_one(q: int) -> None:
    batches = batch_order(np.zeros(q, dtype=np.int64), 64, 0, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(q))
    assert all(len(b) > 1 for b in batches) or q == 1


def test_training_with_a_trailing_single_query_works(tiny_dataset: Path) -> None:
    """The tiny graph has 12 distinct queries; batch size 11 would leave a batch of one, which
    BatchNorm cannot normalise in training mode."""
    from model.kg.triples import AnswerIndex

    ds = load_dataset(tiny_dataset)
    assert len(AnswerIndex(ds.train, ds.num_entities, ds.num_relations)) % 11 == 1
    result = train(TrainConfig(dataset=str(tiny_dataset), epochs=2, batch_size=11), ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=4))
    assert result.epochs_run == 2


def test_auto_precision_is_fp32_on_cpu_whatever_the_load() -> None:
    """No timing probe: the same answer every time on a CPU, so seeded runs are reproducible."""
    assert {resolve_precision("auto", torch.device("cpu")) for _ in range(5)} == {"fp32"}
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_non_finite_loss_stops_training_with_a_clear_error(tiny_dataset: Path, monkeypatch, tmp_path: Path) -> None:
    import model.training.loop as train_mod
    from model.cli import main as cli_main
    from model.errors import TrainingDiverged

    real = train_mod.training_loss

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        return loss * float("nan"), parts

    monkeypatch.setattr(train_mod, "training_loss", poisoned)
    ds = load_dataset(tiny_dataset)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 1.*lower --lr"):
        train(TrainConfig(dataset=str(tiny_dataset), epochs=2, batch_size=4), ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=4))
    out = tmp_path / "never"
    assert cli_main(["train", "--dataset", str(tiny_dataset), "--out", str(out), "--dim", "8", "--quiet"]) == 2
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_cli_train_takes_every_option_from_the_configs_and_fits_the_extras(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    """`imf train` builds its options from TrainConfig and IMFConfig (defaults included: the
    relation size follows --dim) and, by default, fits the bundle's extras after training.
    --no-sizing: the plain dataclass defaults, not those sized for the graph
    (tests/test_run_config.py covers sizing)."""
    from model.bundle.format import CALIBRATION, FEATURE_MAP, read_manifest
    from model.cli import main as cli_main

    out = tmp_path / "run"
    code = cli_main(["train", "--dataset", str(tiny_dataset), "--out", str(out), "--epochs", "2", "--dim", "6", "--batch-size", "4",
                     "--per-query", "--no-residual", "--fusion-activation", "relu", "--valid-subset", "0", "--quiet", "--no-sizing"])
    assert code == 0, capsys.readouterr().err
    m = read_manifest(out)
    cfg, tr = m["model_config"], m["training"]
    assert cfg["dim"] == 6 and cfg["relation_dim"] == 6 and cfg["feature_residual"] is False and cfg["fusion_activation"] == "relu"
    assert cfg["input_dropout"] == IMFConfig().input_dropout and cfg["fusion_rank"] == IMFConfig().fusion_rank
    assert tr["epochs"] == 2 and tr["batch_size"] == 4 and tr["per_answer"] is False and tr["valid_subset"] is None
    assert tr["lr"] == TrainConfig().lr and tr["patience"] == TrainConfig().patience
    assert {CALIBRATION, FEATURE_MAP} <= set(m["files"]) and "calibration" in m["extras"]


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_batchnorm_statistics_match_between_training_and_evaluation(fb15k_slice: Path, loss: str) -> None:
    """After a few hundred steps on uniformly shuffled batches, the model scores the same
    queries alike in training mode (batch statistics; no dropout) and in eval mode (running
    statistics): the ranking of the answers barely changes."""
    ds = load_dataset(fb15k_slice)
    cfg = TrainConfig(dataset=str(fb15k_slice), epochs=8, batch_size=64, lr=0.003, loss=loss, patience=100, valid_subset=200, eval_every=8)
    result = train(cfg, ds, progress=False, model_config=IMFConfig(dim=32, relation_dim=16, input_dropout=0.0, hidden_dropout1=0.0, hidden_dropout2=0.0))
    steps = sum(-(-h["queries"] // 64) for h in result.history)
    assert steps >= 300
    model = result.model
    g = np.random.default_rng(0)
    rows = ds.train[g.choice(len(ds.train), 256, replace=False)]
    heads, rels = torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1])
    with torch.no_grad():
        model.eval()
        _, _, p_eval = model.score_candidates(heads, rels)
        model.train()
        _, _, p_train = model.score_candidates(heads, rels)
        model.eval()
    # The answers' ranks agree: the same MRR either way, and mostly the same top 10.
    tails = torch.from_numpy(rows[:, 2])
    known = torch.zeros_like(p_eval, dtype=torch.bool)
    ranks_eval = filtered_ranks(p_eval, tails, known)
    ranks_train = filtered_ranks(p_train, tails, known)
    mrr_eval, mrr_train = float((1 / ranks_eval).mean()), float((1 / ranks_train).mean())
    top_eval = p_eval.topk(10, dim=1).indices
    top_train = p_train.topk(10, dim=1).indices
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(top_eval, top_train)])
    print(f"{loss}: MRR eval {mrr_eval:.4f} train-mode {mrr_train:.4f}, top-10 overlap {overlap:.3f}")
    assert mrr_eval > 0.1  # the model learned something, so the comparison means something
    assert abs(mrr_train - mrr_eval) < 0.1 * mrr_eval
    assert overlap > 0.7


def test_continued_training_keeps_counting_and_expands_compact_bundles(tiny_dataset: Path, tmp_path: Path) -> None:
    from model.bundle.format import save_bundle
    from model.errors import BundleError

    ds = load_dataset(tiny_dataset)
    kw = dict(dim=8, relation_dim=4)
    first = train(TrainConfig(dataset=str(tiny_dataset), epochs=2, batch_size=4, seed=1, patience=10), ds, progress=False, model_config=IMFConfig(**kw))
    hist = [dict(h) for h in first.history]
    full = save_bundle(tmp_path / "full", first.model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={"history": hist}, metrics={})
    more = train(TrainConfig(dataset=str(tiny_dataset), epochs=4, batch_size=4, seed=1, patience=10, init_from=str(full)), ds, progress=False, model_config=IMFConfig(**kw))
    assert [h["epoch"] for h in more.history] == [1, 2, 3, 4]
    assert more.history[:2] == hist
    assert more.history[2]["train_s"] > hist[-1]["train_s"]
    # A compact bundle (the shipped kind) is expanded against the dataset's features and goes on.
    compact = save_bundle(tmp_path / "compact", first.model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={"history": hist}, metrics={}, compact=True)
    again = train(TrainConfig(dataset=str(tiny_dataset), epochs=3, batch_size=4, seed=1, patience=10, init_from=str(compact)), ds, progress=False, model_config=IMFConfig(**kw))
    assert [h["epoch"] for h in again.history] == [1, 2, 3] and not again.model.cfg.stored_tables
    with pytest.raises(BundleError, match="configuration differs"):
        train(TrainConfig(dataset=str(tiny_dataset), epochs=3, init_from=str(full)), ds, progress=False, model_config=IMFConfig(dim=6, relation_dim=4))
    # A larger relation size widens the bundle's model (compact or not) and goes on counting;
    # a smaller one is refused.
    for src in (full, compact):
        wide = train(TrainConfig(dataset=str(tiny_dataset), epochs=3, batch_size=4, seed=1, patience=10, init_from=str(src)), ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=7))
        assert [h["epoch"] for h in wide.history] == [1, 2, 3] and wide.model.cfg.relation_dim == 7
    with pytest.raises(BundleError, match="relation_dim"):
        train(TrainConfig(dataset=str(tiny_dataset), epochs=3, init_from=str(full)), ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=3))
