"""`imf evaluate` and `imf predict`: a bundle's metrics and top-k answers, no server needed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model.bundle.format import load_bundle
from model.config import positive_int
from model.evaluation.ranking import evaluate, format_report
from model.pipeline import predict


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
