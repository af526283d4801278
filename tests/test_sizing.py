"""The sized defaults (model/training/sizing.py): valid settings for any graph, the rule's
boundaries, and what `imf train` does with them."""

from __future__ import annotations

import dataclasses

import pytest

from model.network.imf import IMFConfig
from model.training.config import TrainConfig
from model.training.sizing import (
    MAX_MINUTES,
    MIN_MINUTES,
    SMALL_GRAPH_TRIPLES,
    describe_graph,
    sized_settings,
)

FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(IMFConfig)}


@pytest.mark.parametrize("n,r,t", [(10, 1, 20), (1_103, 86, 3_095), (6_555, 9, 11_741), (12_785, 273, 76_295), (14_505, 237, 272_115), (1_000_000, 1_000, 10_000_000)])
def test_sized_settings_are_valid_configs(n: int, r: int, t: int) -> None:
    s = sized_settings(n, r, t)
    assert set(s) <= FIELDS
    train = {k: v for k, v in s.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    model = {k: v for k, v in s.items() if k not in train}
    TrainConfig(dataset="x", **train)  # validates
    IMFConfig(**model)
    assert MIN_MINUTES <= s["max_minutes"] <= MAX_MINUTES
    assert s["relation_dim"] <= s["dim"]


def test_the_rule_at_its_boundary_and_for_the_measured_graphs() -> None:
    small = sized_settings(1_103, 86, SMALL_GRAPH_TRIPLES - 1)
    large = sized_settings(12_785, 273, SMALL_GRAPH_TRIPLES)
    assert (small["dim"], small["relation_dim"], small["batch_size"], small["lr"]) == (64, 32, 512, 0.01)
    assert (large["dim"], large["relation_dim"], large["batch_size"], large["lr"]) == (128, 64, 512, 0.003)
    # FB15k-237: the from-scratch recipe of docs/benchmarks.md section 1, and about an hour
    fb = sized_settings(14_505, 237, 272_115)
    assert (fb["dim"], fb["relation_dim"], fb["batch_size"], fb["lr"], fb["lr_decay"]) == (128, 64, 512, 0.003, 0.97)
    assert 55 <= fb["max_minutes"] <= 65
    assert sized_settings(1_103, 86, 3_095)["max_minutes"] == MIN_MINUTES
    assert sized_settings(10**6, 10**3, 10**7)["max_minutes"] == MAX_MINUTES


def test_describe_graph() -> None:
    assert describe_graph(1_103, 86, 3_095) == "1,103 entities, 86 relations, 3,095 training triples (small graph)"
    assert describe_graph(14_505, 237, 272_115).endswith("(large graph)")


def test_imf_train_sizes_what_the_user_left_unset(tiny_dataset, capsys: pytest.CaptureFixture[str]) -> None:
    """--print-config shows the sized values for the options not given, the flag for the one given."""
    import tomllib

    from model.cli import main

    assert main(["train", "--dataset", str(tiny_dataset), "--print-config", "--dim", "16"]) == 0
    out = capsys.readouterr().out
    cfg = tomllib.loads(out)
    flat = {**cfg.get("training", {}), **cfg.get("model", {})}
    assert flat["dim"] == 16  # given
    assert flat["lr"] == 0.01 and flat["batch_size"] == 512 and flat["max_minutes"] == 20.0  # sized (a small graph)
    assert main(["train", "--dataset", str(tiny_dataset), "--print-config", "--no-sizing"]) == 0
    flat = {**(c := tomllib.loads(capsys.readouterr().out)).get("training", {}), **c.get("model", {})}
    assert flat["dim"] == IMFConfig().dim and flat["lr"] == TrainConfig(dataset="x").lr
