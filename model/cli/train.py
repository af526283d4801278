"""`imf train`: options from the config dataclasses, a config file, sized defaults, resuming.

Where each hyperparameter's value comes from, first match wins (model.training.run_config):
the command line, the --config file, the --init-from bundle (model options), the sizing of the
graph (model.training.sizing; not with --no-sizing), the dataclass default. The parser marks
defaults (model.config.Default) so that an option counts as given only when it was typed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from model.bundle.format import MANIFEST, check_writable, read_manifest
from model.config import HelpFormatter, add_arguments, explicit_arguments
from model.errors import IMFError
from model.kg.dataset import KGDataset
from model.network.imf import IMFConfig
from model.pipeline import resolve_resume, resolve_run, train_to_bundle
from model.training.checkpoint import (
    RunError,
    default_run_dir,
    has_checkpoint,
)
from model.training.config import TrainConfig
from model.training.distributed import launched_rank, launched_world_size, session
from model.training.loop import RESUMABLE_CHANGES, train
from model.training.run_config import (
    ResolvedConfig,
)
from model.training.tracking import TRACKERS

log = logging.getLogger("imf")

DESCRIPTION = """\
Train IMF and write a bundle. Each hyperparameter comes from the first of: its option on this
command line, the --config file, the --init-from bundle (model options), the size of the graph
(sized defaults; --no-sizing turns them off), the built-in default. --print-config shows the
result and where each value came from.

The run directory (--run-dir, default: the --out path + ".run", e.g. artifacts/wn.run) gets,
after every epoch, a checkpoint to resume from (imf train --resume artifacts/wn.run), the
epoch metrics (metrics.csv: imf plot artifacts/wn.run draws them) and config.toml. Ctrl-C
or the time budget end the run with the best model so far written to --out; --resume goes on
from the last complete epoch (raise --epochs or --max-minutes to go further).

Several processes, data-parallel (docs/training.md): start this command with torchrun, e.g.
torchrun --nproc-per-node 2 -m model train --dataset wn9-img --out artifacts/wn. Each global
batch of --batch-size queries is shared by the processes (gloo on CPU, NCCL with --device
cuda: one GPU per process); rank 0 evaluates and writes everything; a run directory resumes on
any number of processes.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The options' defaults shown (HelpFormatter), the description's paragraphs kept."""


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train IMF and write a checkpoint bundle", description=DESCRIPTION, formatter_class=_Formatter)
    p.add_argument("--out", type=Path, help="bundle directory to write, e.g. artifacts/RUN (required, except with --resume or --print-config)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out, and start the run directory afresh")
    run = p.add_argument_group("run directory, resuming, configuration")
    run.add_argument("--run-dir", type=Path, help="where checkpoints, metrics.csv and config.toml go (default: OUT.run beside the bundle)")
    run.add_argument("--resume", type=Path, metavar="RUN",
                     help="continue the run in this run directory from its last checkpoint, with its own configuration and "
                          f"bundle path; only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE_CHANGES)} may change")
    run.add_argument("--config", type=Path, metavar="FILE.toml",
                     help="hyperparameters from a TOML file: keys are the option names with underscores, under [training] and "
                          "[model] or at the top level; command-line options override it. TOML, not YAML: its values have "
                          "the type they look like, where YAML reads `no` as false and 1e-3 as a string")
    run.add_argument("--no-sizing", action="store_true", help="no defaults sized for the graph: the plain built-in defaults")
    run.add_argument("--print-config", action="store_true", help="print the resolved configuration as TOML (each value's source in a comment; --config reads it back) and exit")
    run.add_argument("--track", action="append", choices=TRACKERS, default=[],
                     help="also log each epoch to TensorBoard (RUN/tensorboard) or MLflow (RUN/mlruns); repeatable; pip install 'imf-serve[tracking]'")
    # Every hyperparameter, with its default and help, comes from the config dataclasses.
    add_arguments(p.add_argument_group("training (TrainConfig)"), TrainConfig, mark_defaults=True)
    add_arguments(p.add_argument_group("model (IMFConfig)"), IMFConfig, mark_defaults=True)
    p.add_argument("--no-extras", action="store_true", help="skip fitting the probability calibration and the new-entity feature map after training")
    p.add_argument("--compact", action="store_true", help="write a compact bundle: modality tables instead of raw features, int8 entity tables, float16 weights")
    p.add_argument("--report-test", action="store_true", help="after model selection, evaluate the selected model once on the test split and record it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_train)


def given_options(args: argparse.Namespace) -> dict[str, object]:
    """The hyperparameters typed on the command line (field name -> value)."""
    return {**explicit_arguments(TrainConfig, args), **explicit_arguments(IMFConfig, args)}


def resolve_new_run(args: argparse.Namespace) -> tuple[ResolvedConfig, KGDataset | None]:
    """The configuration of a fresh run from the command line, the config file, the
    --init-from bundle and sizing (model.pipeline.resolve_run); and the dataset when sizing
    loaded it (None otherwise)."""
    # Features only when training follows (the same load then serves it). Under torchrun, the
    # ranks other than 0 load the dataset once training starts, after rank 0 has built any
    # features it lacks (model.training.loop.train).
    follower = launched_world_size() > 1 and launched_rank() != 0
    return resolve_run(given_options(args), config_file=args.config, sizing=not args.no_sizing, load_features=not (args.print_config or follower))


def cmd_train(args: argparse.Namespace) -> int:
    if launched_world_size() > 1 and launched_rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)  # under torchrun rank 0 speaks for the run
    if args.resume is not None:
        return _resume(args)
    if args.out is None and not args.print_config:
        raise IMFError("--out is required: the bundle directory to write (or --resume RUN to continue a run)")
    if args.out is not None and not args.print_config:
        check_writable(args.out, overwrite=args.overwrite)  # before loading a dataset for nothing
    resolved, ds = resolve_new_run(args)
    if args.print_config:
        if launched_rank() == 0:
            sys.stdout.write(resolved.to_toml())
        return 0
    _check_device(resolved.train.device)
    run_dir = args.run_dir or default_run_dir(args.out)
    return _run(args, resolved, out=args.out, run_dir=run_dir, resume=False, dataset=ds,
                compact=args.compact, report_test=args.report_test, extras=not args.no_extras, track=args.track)


def _resume(args: argparse.Namespace) -> int:
    run_dir: Path = args.resume
    if args.run_dir is not None and args.run_dir.resolve() != run_dir.resolve():
        raise IMFError(f"--run-dir {args.run_dir} and --resume {run_dir} name different run directories; --resume alone is enough")
    resolved, ckpt = resolve_resume(run_dir, given_options(args), config_file=args.config)
    if args.print_config:
        if launched_rank() == 0:
            sys.stdout.write(resolved.to_toml(header=f"resuming {run_dir} after epoch {ckpt['epoch']}"))
        return 0
    _check_device(resolved.train.device)
    run = ckpt.get("run", {})
    out = args.out or (Path(run["out"]) if run.get("out") else None)
    if out is None:
        raise RunError(f"{run_dir / 'checkpoint.pt'}: does not name its bundle; pass --out")
    # The options of the bundle the run was started with, unless switched on now.
    return _run(args, resolved, out=out, run_dir=run_dir, resume=True, dataset=None,
                compact=args.compact or bool(run.get("compact")), report_test=args.report_test or bool(run.get("report_test")),
                extras=not args.no_extras and bool(run.get("extras", True)), track=args.track or list(run.get("track", [])))


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise IMFError(f"--device {device}: CUDA is not available on this machine")


def _run(args: argparse.Namespace, resolved: ResolvedConfig, *, out: Path, run_dir: Path, resume: bool, dataset: KGDataset | None,
         compact: bool, report_test: bool, extras: bool, track: list[str]) -> int:
    """Train and write the bundle. Under torchrun (WORLD_SIZE > 1) this process joins the
    process group first (model.training.distributed.session): rank 0 goes on as a single
    process would (it alone writes the run directory and the bundle), the other ranks only
    train alongside it and exit quietly."""
    with session(resolved.train.device) as group:
        if group is not None and not group.main:
            train(resolved.train, None, model_config=resolved.model, progress=False, run_dir=run_dir, resume=resume)
            return 0
        return _run_main(args, resolved, out=out, run_dir=run_dir, resume=resume, dataset=dataset, compact=compact,
                         report_test=report_test, extras=extras, track=track)


def _run_main(args: argparse.Namespace, resolved: ResolvedConfig, *, out: Path, run_dir: Path, resume: bool, dataset: KGDataset | None,
              compact: bool, report_test: bool, extras: bool, track: list[str]) -> int:
    started = time.time()
    try:
        path = train_to_bundle(
            resolved.train,
            out,
            model_config=resolved.model,
            overwrite=args.overwrite,
            progress=not args.quiet,
            compact=compact,
            report_test=report_test,
            extras=extras,
            dataset=dataset,
            run_dir=run_dir,
            resume=resume,
            track=track,
            sources=resolved.sources,
        )
    except KeyboardInterrupt:
        manifest = Path(out) / MANIFEST
        if manifest.is_file() and manifest.stat().st_mtime >= started:
            # Written by this run: the interrupt came while its extras were being fitted.
            print(f"imf train: interrupted; the bundle {out} is complete, without its extras (fit them: imf bundle extras {out})", file=sys.stderr)
            return 130
        if not has_checkpoint(run_dir):
            raise  # the CLI's own line: nothing was written
        print(f"imf train: interrupted; no bundle written. Go on from the last complete epoch: imf train --resume {run_dir}", file=sys.stderr)
        return 130
    m = read_manifest(path)
    valid = m["metrics"]["valid"]
    tr = m["training"]
    if tr.get("stopped_by") == "interrupted":
        print(
            f"imf train: interrupted after epoch {tr['epochs_run']}; wrote the best model so far (epoch {tr['best_epoch']}, "
            f"valid MRR {valid['mrr']:.4f}) to {path}. Go on with: imf train --resume {run_dir}",
            file=sys.stderr,
        )
        return 130
    print(f"bundle: {path}  model {m['model_fingerprint'][:12]}  valid MRR {valid['mrr']:.4f}  Hits@10 {valid['hits@10']:.4f}  "
          f"(stopped by {tr.get('stopped_by')}; run directory {run_dir})")
    if tr.get("stopped_by") == "time budget":
        print(f"the time budget ended the run; to go on: imf train --resume {run_dir} --max-minutes M (M counts the whole run)")
    return 0
