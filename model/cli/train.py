"""`imf train`."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.bundle.format import read_manifest
from model.config import HelpFormatter, add_arguments, from_arguments
from model.errors import IMFError
from model.network.imf import IMFConfig
from model.pipeline import train_to_bundle
from model.training.config import TrainConfig


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train IMF and write a checkpoint bundle", formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write, e.g. artifacts/RUN")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    # Every hyperparameter, with its default and help, comes from the config dataclasses.
    add_arguments(p.add_argument_group("training (TrainConfig)"), TrainConfig)
    add_arguments(p.add_argument_group("model (IMFConfig)"), IMFConfig)
    p.add_argument("--no-extras", action="store_true", help="skip fitting the probability calibration and the new-entity feature map after training")
    p.add_argument("--compact", action="store_true", help="write a compact bundle: modality tables instead of raw features, int8 entity tables, float16 weights")
    p.add_argument("--report-test", action="store_true", help="after model selection, evaluate the selected model once on the test split and record it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise IMFError(f"--device {args.device}: CUDA is not available on this machine")
    out = train_to_bundle(
        from_arguments(TrainConfig, args),
        args.out,
        model_config=from_arguments(IMFConfig, args),
        overwrite=args.overwrite,
        progress=not args.quiet,
        compact=args.compact,
        report_test=args.report_test,
        extras=not args.no_extras,
    )
    m = read_manifest(out)
    valid = m["metrics"]["valid"]
    print(f"bundle: {out}  model {m['model_fingerprint'][:12]}  valid MRR {valid['mrr']:.4f}  Hits@10 {valid['hits@10']:.4f}")
    return 0
