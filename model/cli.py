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

from model.errors import IMFError

log = logging.getLogger("imf")

Handler = Callable[[argparse.Namespace], int]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _modalities(text: str) -> list[str]:
    """'text,numeric' -> ['text', 'numeric']; 'none' -> [] (structure only)."""
    if text.strip().lower() in ("none", ""):
        return []
    return [m.strip() for m in text.split(",") if m.strip()]


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train IMF and write a checkpoint bundle", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, help="built-in name (fb15k-237, db15k, wn9-img) or a dataset directory")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write, e.g. artifacts/RUN")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--modalities", type=_modalities, default=None, help="comma list of feature modalities, or 'none' for structure only (default: the dataset's)")
    p.add_argument("--epochs", type=_positive_int, default=50)
    p.add_argument("--dim", type=_positive_int, default=200, help="entity embedding size d")
    p.add_argument("--relation-dim", type=_positive_int, default=None, help="relation embedding size (default: --dim)")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--lr-decay", type=float, default=1.0, help="per-epoch multiplicative learning-rate decay")
    p.add_argument("--loss", choices=("ce", "bce"), default="ce", help="ce: per-branch softmax cross-entropy + their mixture; bce: the paper's binary cross-entropy")
    p.add_argument("--label-smoothing", type=_fraction, default=None, help="default: 0 for ce, 0.1 for bce")
    weighting = p.add_mutually_exclusive_group()
    weighting.add_argument("--per-answer", dest="per_answer", action="store_const", const=True, default=None,
                           help="ce: weight each query by its number of answers, i.e. per-triple 1-vs-all cross-entropy (the default with ce)")
    weighting.add_argument("--per-query", dest="per_answer", action="store_const", const=False,
                           help="ce: weight every query alike (answers share one unit of target mass)")
    p.add_argument("--contrastive-weight", type=float, default=0.0, help="lambda; 0 disables the contrastive loss")
    p.add_argument("--temperature", type=float, default=0.1, help="tau of the contrastive loss")
    p.add_argument("--fusion-rank", type=_positive_int, default=2, help="Tucker rank R of the bilinear fusion")
    p.add_argument("--fusion-activation", choices=("tanh", "relu"), default="tanh", help="factor activation of the bilinear fusion (relu: design.md's formula)")
    p.add_argument("--decision-fusion", choices=("learned", "equal"), default="learned")
    p.add_argument("--no-residual", dest="feature_residual", action="store_false", help="no per-entity residual on modality projections")
    p.add_argument("--input-dropout", type=_fraction, default=0.3)
    p.add_argument("--hidden-dropout1", type=_fraction, default=0.4)
    p.add_argument("--hidden-dropout2", type=_fraction, default=0.5)
    p.add_argument("--relation-groups", type=int, default=0, help="relation-homogeneous chunks per batch (0: uniformly random batches, the default; >0 costs quality)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="training matmuls; auto: bf16 on a CUDA GPU with bf16, fp32 elsewhere")
    p.add_argument("--eval-every", type=_positive_int, default=1)
    p.add_argument("--patience", type=_positive_int, default=5)
    p.add_argument("--valid-subset", type=int, default=3000, help="validation triples for early stopping (0: all)")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget; keeps the best model so far")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--init-from", type=Path, default=None, help="continue training from this bundle (full or compact) of the same model; --epochs counts all epochs; a larger --relation-dim than the bundle's widens its model (same scores to start with)")
    p.add_argument("--no-extras", action="store_true", help="skip fitting the probability calibration and the new-entity feature map after training")
    p.add_argument("--compact", action="store_true", help="write a compact bundle: modality tables instead of raw features, int8 entity tables, float16 weights")
    p.add_argument("--report-test", action="store_true", help="after model selection, evaluate the selected model once on the test split and record it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from model.train import TrainConfig, train_to_bundle

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise IMFError(f"--device {args.device}: CUDA is not available on this machine")
    cfg = TrainConfig(
        dataset=args.dataset,
        modalities=args.modalities,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_decay=args.lr_decay,
        loss=args.loss,
        label_smoothing=args.label_smoothing,
        per_answer=args.per_answer,
        contrastive_weight=args.contrastive_weight,
        temperature=args.temperature,
        relation_groups=args.relation_groups,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        eval_every=args.eval_every,
        patience=args.patience,
        valid_subset=args.valid_subset or None,
        max_minutes=args.max_minutes,
        precision=args.precision,
        init_from=str(args.init_from) if args.init_from else None,
    )
    out = train_to_bundle(
        cfg,
        args.out,
        overwrite=args.overwrite,
        progress=not args.quiet,
        compact=args.compact,
        report_test=args.report_test,
        extras=not args.no_extras,
        dim=args.dim,
        relation_dim=args.relation_dim or args.dim,
        fusion_rank=args.fusion_rank,
        fusion_activation=args.fusion_activation,
        decision_fusion=args.decision_fusion,
        feature_residual=args.feature_residual,
        input_dropout=args.input_dropout,
        hidden_dropout1=args.hidden_dropout1,
        hidden_dropout2=args.hidden_dropout2,
    )
    from model.bundle import read_manifest

    m = read_manifest(out)
    valid = m["metrics"]["valid"]
    print(f"bundle: {out}  model {m['model_fingerprint'][:12]}  valid MRR {valid['mrr']:.4f}  Hits@10 {valid['hits@10']:.4f}")
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="filtered ranking metrics of a bundle")
    p.add_argument("bundle", type=Path)
    p.add_argument("--split", choices=("valid", "test"), default="valid")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model.bundle import load_bundle
    from model.evaluate import evaluate, format_report

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
    p.add_argument("-k", type=_positive_int, default=10)
    p.add_argument("--direction", choices=("tail", "head"), default="tail")
    p.add_argument("--keep-known", action="store_true", help="keep known facts (flagged) instead of filtering them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from model.bundle import load_bundle
    from model.predict import predict

    bundle = load_bundle(args.bundle)
    preds = predict(bundle, args.head, args.relation, k=args.k, direction=args.direction, filter_known=not args.keep_known)
    rows = [
        {"rank": p.rank, "entity": bundle.entity_ids[p.entity], "name": bundle.entity_names[p.entity], "score": p.score, "known": p.known}
        for p in preds
    ]
    if args.json:
        print(json.dumps({"model": bundle.fingerprint, "predictions": rows}))
        return 0
    e = bundle.entity(args.head)
    r = bundle.relation(args.relation)
    arrow = f"({bundle.entity_names[e]}, {bundle.relation_ids[r]}, ?)" if args.direction == "tail" else f"(?, {bundle.relation_ids[r]}, {bundle.entity_names[e]})"
    print(f"{arrow}  model {bundle.fingerprint[:12]}")
    for row in rows:
        flag = "  [known]" if row["known"] else ""
        print(f"{row['rank']:>4}  {row['score']:.4f}  {row['name']}  ({row['entity']}){flag}")
    return 0


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build or check datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="convert a built-in dataset's raw release into data/NAME")
    b.add_argument("name", choices=("fb15k-237", "db15k", "wn9-img"))
    b.add_argument("--source", type=Path, default=None, help="raw datasets folder (default: ../shared/datasets)")
    b.add_argument("--out", type=Path, default=None)
    b.set_defaults(handler=cmd_data_build)
    c = dsub.add_parser("check", help="load and validate a dataset, print its statistics")
    c.add_argument("dataset")
    c.set_defaults(handler=cmd_data_check)


def cmd_data_build(args: argparse.Namespace) -> int:
    from model.datasets import build_builtin

    out = build_builtin(args.name, args.source, args.out)
    print(f"wrote {out}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from model.data import load_dataset

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
    from model import features
    from model.data import resolve_dataset

    root = resolve_dataset(args.dataset)
    if args.feature_command == "text":
        out = features.build_text_features(root)
    elif args.feature_command == "visual":
        out = features.build_visual_features(root, args.images)
    else:
        out = features.build_numeric_features(root, args.triples)
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
    from model.extras import fit_extras

    summary = fit_extras(args.bundle, dataset=args.dataset, numeric_source=args.numeric_source, feature_map=not args.no_feature_map)
    cal = summary["calibration"]
    print(f"calibration: {cal['method']} (cross-fitted valid log-loss {cal['validation'][cal['method']]['log_loss']:.4f}, ECE {cal['validation'][cal['method']]['ece']:.4f}; raw {cal['validation']['identity']['log_loss']:.4f}, {cal['validation']['identity']['ece']:.4f})")
    if "feature_map" in summary:
        fm = summary["feature_map"]
        print(f"feature map: {fm['variant']}, pseudo-inductive valid MRR " + ", ".join(f"{k} {v:.4f}" for k, v in fm["check_valid_mrr"].items()))
    return 0


def cmd_bundle_compact(args: argparse.Namespace) -> int:
    from model.bundle import compact_bundle, read_manifest

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
