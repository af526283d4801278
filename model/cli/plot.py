"""`imf plot RUN`: the learning curve of a run (validation MRR and loss against the epoch) as a PNG.

RUN is a run directory (its metrics.csv, model.training.tracking) or a bundle (the history in
its manifest). Needs matplotlib: `pip install 'imf-serve[tracking]'` (or the `bench` extra).
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

from model.bundle.format import MANIFEST, read_manifest
from model.errors import IMFError
from model.files import atomic_write
from model.training.checkpoint import METRICS
from model.training.tracking import read_metrics

log = logging.getLogger(__name__)

DEFAULT_NAME = "learning_curve.png"


def add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw a run's learning curve (valid MRR and loss per epoch) as a PNG")
    p.add_argument("run", type=Path, metavar="RUN", help="a run directory (its metrics.csv) or a bundle (its manifest's history)")
    p.add_argument("-o", "--output", type=Path, help=f"PNG to write (default: RUN/{DEFAULT_NAME})")
    p.add_argument("--title", help="figure title (default: the run's name)")
    p.set_defaults(handler=cmd_plot)


def run_history(run: Path) -> list[dict[str, float]]:
    """The per-epoch records of a run directory or a bundle, as numbers."""
    if (run / METRICS).is_file():
        return read_metrics(run / METRICS)
    if (run / MANIFEST).is_file():
        history = read_manifest(run).get("training", {}).get("history", [])
        return [{k: float(v) for k, v in h.items() if isinstance(v, (int, float))} for h in history]
    if not run.exists():
        raise IMFError(f"{run}: no such run directory or bundle")
    raise IMFError(f"{run}: neither a run directory (no {METRICS}) nor a bundle (no {MANIFEST})")


def plot_png(history: list[dict[str, float]], title: str) -> bytes:
    """The learning-curve figure as PNG bytes: valid MRR (left axis, epochs with a validation
    run) and the training loss (right axis) against the epoch."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise IMFError("imf plot needs matplotlib: pip install 'imf-serve[tracking]'") from exc
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    try:
        scored = [h for h in history if "valid_mrr" in h]
        ax.plot([h["epoch"] for h in scored], [h["valid_mrr"] for h in scored], "o-", color="tab:blue", label="valid MRR")
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid MRR (filtered)", color="tab:blue")
        loss_ax = ax.twinx()
        losses = [h for h in history if "loss" in h]
        loss_ax.plot([h["epoch"] for h in losses], [h["loss"] for h in losses], "-", color="tab:red", label="training loss")
        loss_ax.set_ylabel("training loss", color="tab:red")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def cmd_plot(args: argparse.Namespace) -> int:
    run: Path = args.run
    history = run_history(run)
    if not history:
        raise IMFError(f"{run}: no epochs recorded yet")
    output: Path = args.output or run / DEFAULT_NAME
    png = plot_png(history, args.title or run.name)
    if not output.parent.is_dir():
        raise IMFError(f"--output {output}: the folder {output.parent} does not exist")
    atomic_write((output, lambda tmp: tmp.write_bytes(png)))
    print(f"learning curve: {output} ({len(history)} epochs)")
    return 0
