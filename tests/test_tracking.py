"""Per-epoch metrics: RUN/metrics.csv as training goes, the optional TensorBoard and MLflow
trackers, and `imf plot RUN`."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pytest

from model.bundle.format import read_manifest
from model.errors import IMFError
from model.kg.dataset import load_dataset
from model.network.imf import IMFConfig
from model.pipeline import train_to_bundle
from model.training.checkpoint import METRICS
from model.training.config import TrainConfig
from model.training.loop import train
from model.training.tracking import METRIC_COLUMNS, open_trackers, read_metrics

MODEL = IMFConfig(dim=8, relation_dim=4)
EXTRA = "pip install 'imf-serve[tracking]'"


def _cfg(tiny: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"dataset": str(tiny), "epochs": 3, "batch_size": 4, "seed": 1, "patience": 10, **kw})


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from model.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_metrics_csv_grows_with_every_epoch(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    seen: list[list[dict]] = []

    def look(record) -> None:  # after each epoch, the file already holds it
        with open(run / METRICS, newline="") as fh:
            seen.append(list(csv.DictReader(fh)))

    result = train(_cfg(tiny_dataset, eval_every=2), load_dataset(tiny_dataset), model_config=MODEL, progress=False, run_dir=run, on_epoch=[look])
    assert [len(rows) for rows in seen] == [1, 2, 3]
    rows = seen[-1]
    assert list(rows[0]) == list(METRIC_COLUMNS)
    for row, h in zip(rows, result.history):
        assert int(row["epoch"]) == h["epoch"] and float(row["loss"]) == h["loss"] and float(row["lr"]) == h["lr"]
        assert float(row["train_s"]) == h["train_s"] and float(row["seconds"]) == h["seconds"]
    # eval_every 2: epoch 1 has no validation (an empty cell); epoch 3, the last, has one.
    assert rows[0]["valid_mrr"] == "" and float(rows[1]["valid_mrr"]) == result.history[1]["valid_mrr"]
    assert float(rows[2]["valid_hits@10"]) == result.history[2]["valid_hits@10"]
    assert [r["epoch"] for r in read_metrics(run / METRICS)] == [1.0, 2.0, 3.0]
    assert not list(run.glob(".*tmp*"))  # written through temporaries, none left behind


def test_a_missing_tracker_package_is_one_line_before_training(tiny_dataset: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(IMFError, match=re.escape(f"--track mlflow needs the mlflow package: {EXTRA}")):
        open_trackers(["mlflow"], tmp_path, {})
    out = tmp_path / "b"
    code, _, err = _cli(["train", "--dataset", str(tiny_dataset), "--out", str(out), "--track", "mlflow", "--epochs", "1", "--dim", "8",
                         "--no-sizing", "--quiet"], capsys)
    assert code == 2
    assert err.strip() == f"imf train: error: --track mlflow needs the mlflow package: {EXTRA}"
    assert not out.exists() and not (tmp_path / "b.run").exists()  # a failed start leaves no run directory


def test_the_extra_named_is_this_project_s() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert f"'{project['project']['name']}[tracking]'" in EXTRA
    extra = project["project"]["optional-dependencies"]["tracking"]
    assert any(d.startswith("tensorboard") for d in extra) and any(d.startswith("mlflow") for d in extra)
    assert any(d.startswith("matplotlib") for d in extra)


def test_tensorboard_tracker_writes_the_epoch_scalars(tiny_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, run = tmp_path / "b", tmp_path / "b.run"
    train_to_bundle(_cfg(tiny_dataset), out, model_config=MODEL, progress=False, run_dir=run, track=["tensorboard"], extras=False)
    history = read_manifest(out)["training"]["history"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"loss", "valid_mrr", "valid_hits_at_10", "lr", "train_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("valid_mrr")] == pytest.approx([h["valid_mrr"] for h in history], abs=1e-6)


def test_mlflow_tracker_logs_into_the_run_directory(tiny_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out, run = tmp_path / "b", tmp_path / "b.run"
    train_to_bundle(_cfg(tiny_dataset), out, model_config=MODEL, progress=False, run_dir=run, track=["mlflow"], extras=False)
    run_id = (run / "mlruns" / "imf_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]
    assert client.get_run(run_id).data.params["lr"] == str(TrainConfig().lr)
    assert client.get_run(run_id).info.status == "FINISHED"


def test_plot_draws_the_learning_curve(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    out, run = tmp_path / "b", tmp_path / "b.run"
    train_to_bundle(_cfg(tiny_dataset), out, model_config=MODEL, progress=False, run_dir=run, extras=False)
    code, stdout, err = _cli(["plot", str(run)], capsys)
    assert code == 0, err
    png = run / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    assert f"learning curve: {png} (3 epochs)" in stdout
    # From a bundle's history too, to a chosen file.
    code, _, err = _cli(["plot", str(out), "--output", str(tmp_path / "curve.png")], capsys)
    assert code == 0, err
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = _cli(["plot", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no such run directory or bundle" in err


def test_plot_without_matplotlib_names_the_extra(tiny_dataset: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    run = tmp_path / "run"
    train(_cfg(tiny_dataset, epochs=1), load_dataset(tiny_dataset), model_config=MODEL, progress=False, run_dir=run)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = _cli(["plot", str(run)], capsys)
    assert code == 2 and err.strip() == f"imf plot: error: imf plot needs matplotlib: {EXTRA}"
    assert not (run / "learning_curve.png").exists()
