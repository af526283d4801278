"""`imf bundle` (compact, extras): operations on a trained bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from model.bundle.format import read_manifest
from model.pipeline import compact_bundle, fit_extras


def add_bundle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="operations on a trained bundle")
    bsub = p.add_subparsers(dest="bundle_command", required=True)
    c = bsub.add_parser("compact", help="write a compact copy for serving: modality tables instead of raw features, int8 entity tables, float16 weights")
    c.add_argument("src", type=Path)
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--report-test", action="store_true", help="also measure and record the test split (after selection)")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(handler=cmd_bundle_compact)
    e = bsub.add_parser("extras", help="fit the probability calibration (valid split) and the new-entity feature map, and add them to the bundle")
    e.add_argument("bundle", type=Path)
    e.add_argument("--dataset", default=None, help="dataset with the trained entities' features (default: the bundle's)")
    e.add_argument("--numeric-source", type=Path, default=None, help="raw numeric-literal file the numeric features were built from: new entities may then give numeric attributes")
    e.add_argument("--no-feature-map", action="store_true", help="calibration only")
    e.set_defaults(handler=cmd_bundle_extras)


def cmd_bundle_extras(args: argparse.Namespace) -> int:
    summary = fit_extras(args.bundle, dataset=args.dataset, numeric_source=args.numeric_source, feature_map=not args.no_feature_map)
    cal = summary["calibration"]
    print(f"calibration: {cal['method']} (cross-fitted valid log-loss {cal['validation'][cal['method']]['log_loss']:.4f}, ECE {cal['validation'][cal['method']]['ece']:.4f}; raw {cal['validation']['identity']['log_loss']:.4f}, {cal['validation']['identity']['ece']:.4f})")
    if "feature_map" in summary:
        fm = summary["feature_map"]
        print(f"feature map: {fm['variant']}, pseudo-inductive valid MRR " + ", ".join(f"{k} {v:.4f}" for k, v in fm["check_valid_mrr"].items()))
    return 0


def cmd_bundle_compact(args: argparse.Namespace) -> int:
    out = compact_bundle(args.src, args.out, report_test=args.report_test, overwrite=args.overwrite, progress=True)
    m = read_manifest(out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    line = f"bundle: {out}  model {m['model_fingerprint'][:12]}  {size / 1e6:.1f} MB  valid MRR {m['metrics']['valid']['mrr']:.4f}"
    if "test" in m["metrics"]:
        line += f"  test MRR {m['metrics']['test']['mrr']:.4f}"
    print(line)
    return 0
