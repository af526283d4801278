"""The run directory: what `train` leaves beside a bundle while it runs, so that a run can be
resumed exactly, watched and plotted.

    artifacts/RUN.run/            (default: the bundle path + ".run"; `imf train --run-dir`)
      checkpoint.pt               the state after the last complete epoch (`save_checkpoint`):
                                  model, optimizer and scheduler states, every random generator,
                                  early-stopping state, history, the resolved configurations
      metrics.csv                 one row per epoch (model.training.tracking.METRIC_COLUMNS)
      config.toml                 the resolved configuration, each value's source in a comment
                                  (`imf train --config` accepts it back)
      tensorboard/, mlruns/       with `imf train --track tensorboard|mlflow`

Each file is replaced atomically (model.files.atomic_write): a run killed at any moment leaves
the checkpoint of its last complete epoch, never half a file. The checkpoint is read with
`torch.load(weights_only=True)`: tensors, numbers, strings, lists, dicts and tuples only, nothing
that runs code when loaded.

A data-parallel run (torchrun; model.training.distributed) writes the same file, from rank 0
alone, with one more key, `world_size` (absent: one process). What the next epoch depends on is
the same on every rank (weights, optimizer and scheduler states, the batch-order Generator, the
contrastive Generator), except the dropout generator: rank 0's is saved, and every other rank
re-seeds its own at each epoch from (seed, rank, epoch), so no per-rank state is needed. The
batch order is drawn as global batches of --batch-size queries, whatever the number of
processes, so a checkpoint resumes on any number of them (`world_size_of`): the same batches and
BatchNorm statistics (over the global batch) follow; only the dropout masks, drawn per rank, and
float rounding differ from going on with the original number. Resuming with the same number of
processes on the same device continues exactly. Every rank reads the checkpoint: the run
directory must be visible to all of them (a shared filesystem across nodes).
"""

from __future__ import annotations

import logging
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.errors import IMFError
from model.files import atomic_write

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
RUN_CONFIG = "config.toml"
TENSORBOARD = "tensorboard"
MLRUNS = "mlruns"
# Everything a run directory may hold that this package wrote: what `clear_run_dir` removes
# (never anything else, so a --run-dir pointed at a busy folder loses nothing of the user's).
RUN_FILES = (CHECKPOINT, METRICS, RUN_CONFIG, "learning_curve.png")
RUN_FOLDERS = (TENSORBOARD, MLRUNS)
CHECKPOINT_FORMAT = "imf-checkpoint"
CHECKPOINT_VERSION = 1


class RunError(IMFError):
    """A run directory or its checkpoint is missing, corrupt, or does not fit this run."""


def default_run_dir(out: str | Path) -> Path:
    """The run directory of a bundle path: a sibling folder, `artifacts/wn` -> `artifacts/wn.run`."""
    out = Path(out)
    return out.with_name(out.name + ".run")


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CHECKPOINT).is_file()


def clear_run_dir(run_dir: str | Path) -> None:
    """Remove what an earlier run wrote into `run_dir` (RUN_FILES, RUN_FOLDERS) and nothing else."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def prepare_run_dir(run_dir: str | Path, *, overwrite: bool) -> Path:
    """Create `run_dir` for a fresh run. A checkpoint already there belongs to another run: it is
    refused (resume it, or start afresh with overwrite) rather than silently replaced."""
    run_dir = Path(run_dir)
    if has_checkpoint(run_dir):
        if not overwrite:
            raise RunError(
                f"{run_dir / CHECKPOINT}: a run's checkpoint is already there; continue it with `imf train --resume {run_dir}` "
                "or pass --overwrite to start afresh"
            )
        clear_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


# ----------------------------------------------------------------------------- random generators


def rng_states(rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    """Every random generator training draws from, as plain values torch.load(weights_only=True)
    reads back: Python's, NumPy's global one, torch's CPU (and CUDA) default generators, the
    NumPy Generator of the batch order and the torch Generator of the contrastive sample."""
    legacy = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "python": random.getstate(),
        # The Mersenne Twister key is an array: a list of ints, so no NumPy object is pickled.
        "numpy_global": {**legacy, "state": {**legacy["state"], "key": legacy["state"]["key"].tolist()}},
        "torch": torch.get_rng_state(),
        "batch_order": rng.bit_generator.state,
        "contrastive": gen.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any], rng: np.random.Generator, gen: torch.Generator) -> None:
    """Put back what `rng_states` saved (in place: `rng` and `gen` are the run's own objects)."""
    random.setstate(states["python"])
    legacy = states["numpy_global"]
    np.random.set_state({**legacy, "state": {**legacy["state"], "key": np.asarray(legacy["state"]["key"], dtype=np.uint32)}})
    torch.set_rng_state(states["torch"])
    rng.bit_generator.state = states["batch_order"]
    gen.set_state(states["contrastive"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ----------------------------------------------------------------------------- the checkpoint file


def save_checkpoint(run_dir: str | Path, state: dict[str, Any], *, also: tuple[tuple[Path, Any], ...] = ()) -> Path:
    """Write `state` to RUN/checkpoint.pt atomically (with the files in `also`, (path, writer)
    pairs for model.files.atomic_write, renamed in the same step after it)."""
    path = Path(run_dir) / CHECKPOINT
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}
    atomic_write((path, lambda tmp: torch.save(payload, tmp)), *also)
    return path


def world_size_of(state: dict[str, Any]) -> int:
    """How many processes trained the run up to this checkpoint (1 for a single process)."""
    return int(state.get("world_size", 1))


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The state `save_checkpoint` wrote to RUN/checkpoint.pt (tensors on the CPU); RunError
    naming the file when it is missing, corrupt or of another format."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory (imf train writes one beside the bundle: --out PATH -> PATH.run)")
    if not path.is_file():
        raise RunError(f"{path}: missing; the run ended before its first epoch did, or this is not a run directory")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise RunError(f"{path}: cannot read the checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not an {CHECKPOINT_FORMAT} file")
    if state.get("format_version") != CHECKPOINT_VERSION:
        raise RunError(f"{path}: format_version {state.get('format_version')!r} is not supported (this library reads {CHECKPOINT_VERSION})")
    return state


__all__ = [
    "CHECKPOINT", "METRICS", "MLRUNS", "RUN_CONFIG", "TENSORBOARD", "RunError", "clear_run_dir", "default_run_dir", "has_checkpoint",
    "load_checkpoint", "prepare_run_dir", "restore_rng_states", "rng_states", "save_checkpoint", "world_size_of",
]
