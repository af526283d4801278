"""Command-line interface of the ML side: `imf train | evaluate | predict | data | features`.

`service.cli` adds `imf serve` on top of these (the console script `imf` points there, so that
this package never imports the service). `python -m model ...` runs these commands alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from model.bundle.format import load_bundle, read_manifest
from model.config import HelpFormatter, add_arguments, from_arguments, positive_int
from model.errors import IMFError
from model.evaluation.ranking import evaluate, format_report
from model.features import numeric as numeric_features
from model.features import text as text_features
from model.features import visual as visual_features
from model.kg.builtin import build_builtin
from model.kg.dataset import BUILTIN_DATASETS, load_dataset, resolve_dataset
from model.network.imf import IMFConfig
from model.pipeline import compact_bundle, fit_extras, predict, train_to_bundle
from model.training.config import TrainConfig

log = logging.getLogger("imf")


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


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="filtered ranking metrics of a bundle")
    p.add_argument("bundle", type=Path)
    p.add_argument("--split", choices=("valid", "test"), default="valid")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle)
    model = bundle.model.to(args.device)
    report = evaluate(
        model, bundle.triples[args.split], bundle.known, split=args.split,
        batch_size=args.batch_size, device=args.device, progress=not args.quiet and not args.json,
    )
    report["model"] = bundle.fingerprint
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k predictions for one query, no server needed")
    p.add_argument("bundle", type=Path)
    p.add_argument("--head", required=True, help="entity id or exact name (the known tail with --direction head)")
    p.add_argument("--relation", required=True, help="relation id or name")
    p.add_argument("-k", type=positive_int, default=10)
    p.add_argument("--direction", choices=("tail", "head"), default="tail")
    p.add_argument("--keep-known", action="store_true", help="keep known facts (flagged) instead of filtering them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle)
    preds = predict(bundle, args.head, args.relation, k=args.k, direction=args.direction, filter_known=not args.keep_known)
    vocab = bundle.vocab
    rows = [
        {"rank": p.rank, "entity": vocab.entity_ids[p.entity], "name": vocab.entity_names[p.entity], "score": p.score, "known": p.known}
        for p in preds
    ]
    if args.json:
        print(json.dumps({"model": bundle.fingerprint, "predictions": rows}))
        return 0
    e = vocab.entity(args.head)
    r = vocab.relation(args.relation)
    arrow = f"({vocab.entity_names[e]}, {vocab.relation_ids[r]}, ?)" if args.direction == "tail" else f"(?, {vocab.relation_ids[r]}, {vocab.entity_names[e]})"
    print(f"{arrow}  model {bundle.fingerprint[:12]}")
    for row in rows:
        flag = "  [known]" if row["known"] else ""
        print(f"{row['rank']:>4}  {row['score']:.4f}  {row['name']}  ({row['entity']}){flag}")
    return 0


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build or check datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="convert a built-in dataset's raw release into data/NAME")
    b.add_argument("name", choices=BUILTIN_DATASETS)
    b.add_argument("--source", type=Path, default=None, help="raw datasets folder (default: ../shared/datasets)")
    b.add_argument("--out", type=Path, default=None)
    b.set_defaults(handler=cmd_data_build)
    c = dsub.add_parser("check", help="load and validate a dataset, print its statistics")
    c.add_argument("dataset")
    c.set_defaults(handler=cmd_data_check)


def cmd_data_build(args: argparse.Namespace) -> int:
    out = build_builtin(args.name, args.source, args.out)
    print(f"wrote {out}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    ds = load_dataset(args.dataset)
    print(json.dumps({
        "name": ds.name,
        "entities": ds.num_entities,
        "relations": ds.num_relations,
        "triples": {s: len(ds.split(s)) for s in ("train", "valid", "test")},
        "modalities": {m: {"dim": f.dim, "coverage": f.coverage} for m, f in ds.features.items()},
        "default_modalities": ds.default_modalities,
        "fingerprint": ds.fingerprint,
    }, indent=2))
    return 0


def add_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="(re)build a dataset's feature files with the offline encoders")
    fsub = p.add_subparsers(dest="feature_command", required=True)
    t = fsub.add_parser("text", help="MiniLM sentence embeddings of entity names + descriptions")
    t.add_argument("dataset")
    t.set_defaults(handler=cmd_features)
    v = fsub.add_parser("visual", help="EfficientNet-Lite0 image embeddings")
    v.add_argument("dataset")
    v.add_argument("--images", type=Path, required=True, help="folder with one sub-folder of images per entity")
    v.set_defaults(handler=cmd_features)
    n = fsub.add_parser("numeric", help="normalised numeric literals")
    n.add_argument("dataset")
    n.add_argument("--triples", type=Path, required=True, help="entity <TAB> attribute <TAB> value file")
    n.set_defaults(handler=cmd_features)


def cmd_features(args: argparse.Namespace) -> int:
    root = resolve_dataset(args.dataset)
    if args.feature_command == "text":
        out = text_features.build_text_features(root)
    elif args.feature_command == "visual":
        out = visual_features.build_visual_features(root, args.images)
    else:
        out = numeric_features.build_numeric_features(root, args.triples)
    print(f"wrote {out}")
    return 0


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


def build_parser(extra: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imf", description="IMF multimodal knowledge-graph link prediction")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train, add_evaluate, add_predict, add_bundle, add_data, add_features, *extra):
        add(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn user errors into one clear line on stderr (exit status 2)."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it found: noise
    try:
        return int(args.handler(args) or 0)
    except IMFError as exc:
        print(f"imf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # invalid parameter values from the config dataclasses
        print(f"imf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"imf {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
