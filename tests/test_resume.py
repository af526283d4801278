"""Checkpoints and resuming: a run stopped after epoch k and resumed ends exactly where an
uninterrupted one does; Ctrl-C and the time budget end with the best bundle so far written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from model.bundle.format import CALIBRATION, load_bundle, read_manifest
from model.kg.dataset import load_dataset
from model.network.imf import IMFConfig
from model.pipeline import train_to_bundle
from model.training.checkpoint import CHECKPOINT, METRICS, RunError, load_checkpoint
from model.training.config import TrainConfig
from model.training.loop import train

# Dropout on, the contrastive loss on (it draws from the run's torch Generator), batches of 4 of
# the tiny graph's 12 queries: every random generator the loop uses matters to the result.
MODEL = IMFConfig(dim=8, relation_dim=4)


def _cfg(tiny: Path, **kw) -> TrainConfig:
    base = {"dataset": str(tiny), "epochs": 5, "batch_size": 4, "seed": 3, "patience": 50, "contrastive_weight": 0.1, "contrastive_size": 4, "lr": 0.01}
    return TrainConfig(**{**base, **kw})


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _curve(history: list[dict]) -> list[tuple]:
    """What a run learned, epoch by epoch (timings left out)."""
    return [(h["epoch"], h["loss"], h.get("valid_mrr"), h["lr"]) for h in history]


class Killed(RuntimeError):
    """Stands for the process dying right after an epoch's checkpoint was written."""


@pytest.mark.parametrize("stop", ["killed", "shorter run"])
def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tiny_dataset: Path, tmp_path: Path, stop: str) -> None:
    ds = load_dataset(tiny_dataset)
    cfg = _cfg(tiny_dataset)
    whole = train(cfg, ds, model_config=MODEL, progress=False, run_dir=tmp_path / "whole")
    k = 2
    part = tmp_path / "part"
    if stop == "killed":
        def die(record) -> None:
            if record["epoch"] == k:
                raise Killed

        with pytest.raises(Killed):
            train(cfg, ds, model_config=MODEL, progress=False, run_dir=part, on_epoch=[die])
    else:
        train(dataclasses.replace(cfg, epochs=k), ds, model_config=MODEL, progress=False, run_dir=part)
    assert load_checkpoint(part)["epoch"] == k
    resumed = train(cfg, ds, progress=False, run_dir=part, resume=True)  # the model configuration comes from the checkpoint

    assert _curve(resumed.history) == _curve(whole.history)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    # The selected (best) model, and the last weights and optimizer moments of epoch 5, bit for bit.
    assert _same_state(resumed.model.state_dict(), whole.model.state_dict())
    end_whole, end_resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(part)
    assert _same_state(end_resumed["model"], end_whole["model"])
    opt_w, opt_r = end_whole["optimizer"]["state"], end_resumed["optimizer"]["state"]
    assert opt_w.keys() == opt_r.keys() and all(_same_state(opt_w[i], opt_r[i]) for i in opt_w)
    assert resumed.best_epoch == whole.best_epoch and resumed.epochs_run == 5
    assert resumed.valid_metrics["mrr"] == whole.valid_metrics["mrr"]
    # Training time goes on counting from the part that ran before.
    assert resumed.history[k]["train_s"] > resumed.history[k - 1]["train_s"]


def test_without_its_random_states_a_resumed_run_would_differ(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """The exactness above rests on the generators saved in the checkpoint: re-seeded instead,
    the resumed epochs draw other batches and dropout masks."""
    from model.training import loop

    ds = load_dataset(tiny_dataset)
    cfg = _cfg(tiny_dataset, epochs=4)
    whole = train(cfg, ds, model_config=MODEL, progress=False)
    train(dataclasses.replace(cfg, epochs=2), ds, model_config=MODEL, progress=False, run_dir=tmp_path / "part")
    monkeypatch.setattr(loop, "restore_rng_states", lambda *a, **k: None)
    resumed = train(cfg, ds, model_config=MODEL, progress=False, run_dir=tmp_path / "part", resume=True)
    assert _curve(resumed.history)[:2] == _curve(whole.history)[:2]
    assert _curve(resumed.history)[2:] != _curve(whole.history)[2:]


def test_resuming_refuses_another_configuration_and_a_finished_run(tiny_dataset: Path, tmp_path: Path) -> None:
    ds = load_dataset(tiny_dataset)
    cfg = _cfg(tiny_dataset, epochs=2)
    run = tmp_path / "run"
    train(cfg, ds, model_config=MODEL, progress=False, run_dir=run)
    with pytest.raises(RunError, match=r"checkpoint\.pt: a resumed run keeps its configuration.*lr 0\.01 \(the run's\) vs 0\.5"):
        train(dataclasses.replace(cfg, epochs=4, lr=0.5), ds, model_config=MODEL, progress=False, run_dir=run, resume=True)
    with pytest.raises(RunError, match=r"dim 8 \(the run's\) vs 16"):
        train(dataclasses.replace(cfg, epochs=4), ds, model_config=IMFConfig(dim=16, relation_dim=4), progress=False, run_dir=run, resume=True)
    with pytest.raises(RunError, match="all 2 epochs of this run are done; pass a larger --epochs"):
        train(cfg, ds, progress=False, run_dir=run, resume=True)
    # A fresh run does not silently replace another run's checkpoint.
    with pytest.raises(RunError, match="already there; continue it with `imf train --resume"):
        train(cfg, ds, model_config=MODEL, progress=False, run_dir=run)
    # A run that stopped early has nothing left to do.
    early = tmp_path / "early"
    stopped = train(_cfg(tiny_dataset, epochs=50, patience=1, lr=1e-9), ds, model_config=MODEL, progress=False, run_dir=early)
    assert stopped.stopped_by == "early stopping"
    with pytest.raises(RunError, match="stopped early"):
        train(_cfg(tiny_dataset, epochs=60, patience=1, lr=1e-9), ds, progress=False, run_dir=early, resume=True)


def test_a_corrupt_or_missing_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(RunError, match="no such run directory"):
        load_checkpoint(run)
    run.mkdir()
    with pytest.raises(RunError, match=r"checkpoint\.pt: missing"):
        load_checkpoint(run)
    (run / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match=r"checkpoint\.pt: cannot read the checkpoint"):
        load_checkpoint(run)


def test_ctrl_c_writes_the_best_bundle_so_far_and_the_run_resumes(tiny_dataset: Path, tmp_path: Path) -> None:
    out, run = tmp_path / "wn", tmp_path / "wn.run"
    cfg = _cfg(tiny_dataset, epochs=4)

    def ctrl_c(record) -> None:
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    path = train_to_bundle(cfg, out, model_config=MODEL, progress=False, run_dir=run, on_epoch=[ctrl_c])
    bundle = load_bundle(path)  # complete and verified
    tr = bundle.manifest["training"]
    assert tr["stopped_by"] == "interrupted" and tr["epochs_run"] == 1 and tr["best_epoch"] == 1
    assert tr["run_dir"] == str(run.resolve())
    assert CALIBRATION not in bundle.manifest["files"]  # no extras after Ctrl-C: the user wants out
    assert load_checkpoint(run)["epoch"] == 1
    # Resuming replaces that bundle (its own) without --overwrite and goes on counting.
    again = train_to_bundle(cfg, out, model_config=MODEL, progress=False, run_dir=run, resume=True, extras=False)
    tr = read_manifest(again)["training"]
    assert tr["stopped_by"] == "epochs" and [h["epoch"] for h in tr["history"]] == [1, 2, 3, 4]
    assert (run / METRICS).read_text().count("\n") == 1 + 4


def test_ctrl_c_before_any_validation_writes_nothing(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from model.training import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "training_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_to_bundle(_cfg(tiny_dataset), tmp_path / "wn", model_config=MODEL, progress=False, run_dir=tmp_path / "wn.run")
    assert not (tmp_path / "wn").exists() and not list(tmp_path.glob(".wn*"))
    assert not (tmp_path / "wn.run").exists()  # not one epoch done: nothing to resume, no run directory


def test_the_time_budget_writes_the_bundle_and_counts_the_whole_run(tiny_dataset: Path, tmp_path: Path) -> None:
    out, run = tmp_path / "b", tmp_path / "b.run"
    # Patience that never runs out: only the budget can stop the run, however fast the machine.
    cfg = _cfg(tiny_dataset, epochs=100_000, batch_size=2, max_minutes=0.01, contrastive_weight=0.0, patience=10**9)
    path = train_to_bundle(cfg, out, model_config=MODEL, progress=False, run_dir=run, extras=False)
    tr = read_manifest(path)["training"]
    assert tr["stopped_by"] == "time budget" and load_checkpoint(run)["stopped_by"] == "time budget"
    done = tr["epochs_run"]
    # The same budget is used up; a larger one goes on from where the run stopped.
    with pytest.raises(RunError, match=r"time budget of 0.01 minutes is used up.*pass a larger --max-minutes"):
        train(cfg, progress=False, run_dir=run, resume=True)
    # A larger budget, by 0.6 s more than the run has used (whatever that was on this machine).
    more_minutes = load_checkpoint(run)["wall_s"] / 60 + 0.01
    more = train(dataclasses.replace(cfg, max_minutes=more_minutes), progress=False, run_dir=run, resume=True)
    assert more.stopped_by == "time budget" and more.epochs_run > done
    assert [h["epoch"] for h in more.history] == list(range(1, more.epochs_run + 1))


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from model.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_ctrl_c_then_resume(tiny_dataset: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """`imf train` interrupted after epoch 1 says where the best model went and how to go on;
    `imf train --resume RUN` goes on with the run's own configuration and bundle path, refuses
    another learning rate and accepts more epochs."""
    from model.training import loop

    out = tmp_path / "wn"
    run = tmp_path / "wn.run"
    real_save = loop.save_checkpoint

    def save_then_ctrl_c(run_dir, state, **kw):
        real_save(run_dir, state, **kw)
        if state["epoch"] == 1:
            raise KeyboardInterrupt  # Ctrl-C right after epoch 1's checkpoint

    monkeypatch.setattr(loop, "save_checkpoint", save_then_ctrl_c)
    base = ["train", "--dataset", str(tiny_dataset), "--out", str(out), "--epochs", "3", "--batch-size", "4", "--dim", "8",
            "--relation-dim", "4", "--no-sizing", "--no-extras", "--quiet"]
    code, _, err = _cli(base, capsys)
    assert code == 130
    assert "wrote the best model so far (epoch 1, valid MRR" in err and f"to {out}" in err
    assert f"imf train --resume {run}" in err
    assert "Traceback" not in err and read_manifest(out)["training"]["stopped_by"] == "interrupted"
    monkeypatch.setattr(loop, "save_checkpoint", real_save)

    code, _, err = _cli(["train", "--resume", str(run), "--lr", "0.5", "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--lr 0.5 (flag) conflicts with the run's lr = 0.001" in err and "--epochs" in err

    code, stdout, err = _cli(["train", "--resume", str(run), "--epochs", "4", "--quiet"], capsys)
    assert code == 0, err
    assert f"bundle: {out}" in stdout
    tr = read_manifest(out)["training"]
    assert tr["stopped_by"] == "epochs" and tr["epochs"] == 4 and [h["epoch"] for h in tr["history"]] == [1, 2, 3, 4]
    assert tr["sources"]["epochs"] == "flag" and tr["sources"]["dim"] == "checkpoint"
    assert read_manifest(out)["model_config"]["dim"] == 8
