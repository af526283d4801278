"""Training: batch assembly, determinism, parameter validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.data import load_dataset
from model.train import TrainConfig, batch_order, train


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
    a = train(cfg, ds, progress=False, dim=8, relation_dim=4)
    b = train(cfg, ds, progress=False, dim=8, relation_dim=4)
    c = train(TrainConfig(dataset=str(tiny_dataset), epochs=3, batch_size=4, seed=8), ds, progress=False, dim=8, relation_dim=4)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.valid_metrics["mrr"] == b.valid_metrics["mrr"]
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_time_budget_stops_training_and_keeps_a_model(tiny_dataset: Path) -> None:
    ds = load_dataset(tiny_dataset)
    cfg = TrainConfig(dataset=str(tiny_dataset), epochs=10_000, batch_size=2, max_minutes=0.02, patience=10_000)
    result = train(cfg, ds, progress=False, dim=4, relation_dim=2)
    assert result.stopped_by == "time budget"
    assert result.epochs_run < 10_000
    assert result.best_epoch >= 1
