"""Per-epoch metrics of a run: always RUN/metrics.csv, optionally TensorBoard or MLflow.

metrics.csv is rewritten whole (atomically) from the run's history after every epoch, in the same
step as the checkpoint (model.training.checkpoint), so it always matches it, resumed runs
included. A spreadsheet, pandas or `imf plot RUN` reads it.

The trackers (`open_trackers`) are optional extras: `pip install 'imf-serve[tracking]'`. Both keep
their stores in the run directory and work offline: TensorBoard event files in RUN/tensorboard
(`tensorboard --logdir RUN/tensorboard`), an MLflow file store in RUN/mlruns
(`mlflow ui --backend-store-uri RUN/mlruns`). A tracker is called after each epoch's checkpoint
is written, with that epoch's history record.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from model.errors import IMFError
from model.files import atomic_write
from model.training.checkpoint import MLRUNS, TENSORBOARD

log = logging.getLogger(__name__)

# The columns of metrics.csv, in order: a record's other keys are left out, a missing one
# (valid_mrr on an epoch without validation) is an empty cell.
METRIC_COLUMNS = ("epoch", "loss", "valid_mrr", "valid_hits@10", "seconds", "train_s", "lr", "queries", "queries_per_s")
# What a tracker logs per epoch: the record's numbers except the epoch (the step).
TRACKED = tuple(c for c in METRIC_COLUMNS if c != "epoch")
TRACKERS = ("tensorboard", "mlflow")
EXTRA = "pip install 'imf-serve[tracking]'"


def metrics_csv(history: Sequence[Mapping[str, Any]]) -> str:
    """The text of metrics.csv for a run's history (one record per epoch)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", restval="", lineterminator="\n")
    writer.writeheader()
    for record in history:
        writer.writerow(record)
    return buf.getvalue()


def metrics_writer(path: Path, history: Sequence[Mapping[str, Any]]) -> tuple[Path, Callable[[Path], None]]:
    """(path, writer) for model.files.atomic_write: metrics.csv from `history`."""
    text = metrics_csv(history)
    return path, lambda tmp: tmp.write_text(text, encoding="utf-8")


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.csv as numbers (empty cells left out); IMFError naming the file and
    line of anything that is not."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise IMFError(f"{path}: cannot read ({exc.strerror})") from exc
    rows = []
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "epoch" not in reader.fieldnames:
        raise IMFError(f"{path}: not a metrics file (no 'epoch' column)")
    for lineno, row in enumerate(reader, start=2):
        try:
            rows.append({k: float(v) for k, v in row.items() if k and v not in ("", None)})
        except ValueError as exc:
            raise IMFError(f"{path}:{lineno}: {exc}") from exc
    return rows


class Tracker(Protocol):
    """Receives each epoch's history record; closed when the run ends (however it ends)."""

    def __call__(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def _numbers(record: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(record[k]) for k in TRACKED if isinstance(record.get(k), (int, float)) and math.isfinite(float(record[k]))}


class TensorBoardTracker:
    """Scalars per epoch (step = epoch) in RUN/tensorboard, through torch's SummaryWriter."""

    def __init__(self, run_dir: Path, params: Mapping[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise IMFError(f"--track tensorboard needs the tensorboard package: {EXTRA}") from exc
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD))
        self.writer.add_text("config", "\n".join(f"    {k} = {v!r}" for k, v in params.items()), 0)

    def __call__(self, record: Mapping[str, Any]) -> None:
        for key, value in _numbers(record).items():
            self.writer.add_scalar(key.replace("@", "_at_"), value, int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    """An MLflow run in the file store RUN/mlruns: the configuration as parameters, the epoch
    metrics (step = epoch). A resumed run goes on logging into the same MLflow run (its id is
    kept in RUN/mlruns/imf_run_id)."""

    EXPERIMENT = "imf"

    def __init__(self, run_dir: Path, params: Mapping[str, Any]) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise IMFError(f"--track mlflow needs the mlflow package: {EXTRA}") from exc
        store = (Path(run_dir) / MLRUNS).resolve()
        store.mkdir(parents=True, exist_ok=True)
        # MLflow 3 refuses its file store unless this is set (it prefers a database, which
        # needs SQLAlchemy and a server-side schema): the file store is what works offline
        # in a run directory with mlflow-skinny alone. A value the user set is kept.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=store.as_uri())
        id_file = store / "imf_run_id"
        run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else ""
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            exp = self.client.get_experiment_by_name(self.EXPERIMENT)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.EXPERIMENT)
            run_id = self.client.create_run(exp_id, run_name=Path(run_dir).name).info.run_id
            for key, value in params.items():
                self.client.log_param(run_id, key, "" if value is None else str(value)[:500])  # MLflow caps a value's length
            atomic_write((id_file, lambda tmp: tmp.write_text(run_id, encoding="utf-8")))
        self.run_id = run_id

    def __call__(self, record: Mapping[str, Any]) -> None:
        step = int(record["epoch"])
        for key, value in _numbers(record).items():
            self.client.log_metric(self.run_id, key.replace("@", "_at_"), value, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_trackers(kinds: Sequence[str], run_dir: Path, params: Mapping[str, Any]) -> list[Tracker]:
    """The trackers named in `kinds` (TRACKERS), each storing into `run_dir`. A missing package
    is one IMFError line naming the extra to install, raised before any training."""
    unknown = [k for k in kinds if k not in TRACKERS]
    if unknown:
        raise IMFError(f"--track {unknown[0]}: unknown tracker (known: {', '.join(TRACKERS)})")
    made: list[Tracker] = []
    try:
        for kind in dict.fromkeys(kinds):
            made.append(TensorBoardTracker(run_dir, params) if kind == "tensorboard" else MlflowTracker(run_dir, params))
    except BaseException:
        close_trackers(made)
        raise
    return made


def close_trackers(trackers: Sequence[Tracker]) -> None:
    """Close each tracker; one that fails is logged, the others are still closed."""
    for tracker in trackers:
        try:
            tracker.close()
        except Exception as exc:
            log.warning("closing the %s tracker failed: %s", type(tracker).__name__, exc)


__all__ = [
    "METRIC_COLUMNS", "TRACKERS", "MlflowTracker", "TensorBoardTracker", "Tracker", "close_trackers", "metrics_csv", "metrics_writer",
    "open_trackers", "read_metrics",
]
