"""`imf evaluate` and `imf predict`: a bundle's metrics and top-k answers, no server needed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.api import evaluate as evaluate_bundle
from model.api import predict as predict_rows
from model.bundle.format import load_bundle
from model.config import positive_int
from model.errors import AmbiguousNameError, shorten
from model.evaluation.ranking import format_report

DESCRIPTION_WIDTH = 70  # characters of a candidate's description `imf predict` prints


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
    report = evaluate_bundle(args.bundle, args.split, batch_size=args.batch_size, device=args.device, progress=not args.quiet and not args.json)
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
    vocab = bundle.vocab
    try:
        e = vocab.entity(args.head)
        r = vocab.relation(args.relation)
    except AmbiguousNameError as exc:
        return print_candidates(exc, as_json=args.json)
    # Resolved once, by id from here on (an id always resolves to itself).
    rows = predict_rows(bundle, vocab.entity_ids[e], vocab.relation_ids[r], k=args.k, direction=args.direction, filter_known=not args.keep_known)
    if args.json:
        print(json.dumps({"model": bundle.fingerprint, "predictions": rows}))
        return 0
    head = f"{vocab.entity_names[e]} ({vocab.entity_ids[e]})"
    arrow = f"({head}, {vocab.relation_ids[r]}, ?)" if args.direction == "tail" else f"(?, {vocab.relation_ids[r]}, {head})"
    print(f"{arrow}  model {bundle.fingerprint[:12]}")
    for row in rows:
        flag = "  [known]" if row["known"] else ""
        print(f"{row['rank']:>4}  {row['score']:.4f}  {row['name']}  ({row['entity']}){flag}")
    return 0


def print_candidates(exc: AmbiguousNameError, *, as_json: bool) -> int:
    """An ambiguous --head or --relation: the candidates one a line on stderr (id, name,
    description cut short), so the user can rerun with the id; with --json also one JSON object
    on stdout. Exit status 2, as every user error."""
    plural = "entities" if exc.kind == "entity" else f"{exc.kind}s"
    print(f"imf predict: error: {exc.name!r} is ambiguous: {exc.total} {plural} have this name; rerun with one of these ids:", file=sys.stderr)
    width = max(len(c.id) for c in exc.candidates)
    for c in exc.candidates:
        about = f"  {shorten(c.description, DESCRIPTION_WIDTH)}" if c.description.strip() else ""
        print(f"  {c.id:<{width}}  {c.name}{about}", file=sys.stderr)
    if exc.total > len(exc.candidates):
        print(f"  ... and {exc.total - len(exc.candidates)} more", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": "ambiguous_name", "message": str(exc), "candidates": [c.as_dict() for c in exc.candidates], "total": exc.total}))
    return 2
