"""`imf data` (build, check) and `imf features` (text, visual, numeric)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model.features import numeric as numeric_features
from model.features import text as text_features
from model.features import visual as visual_features
from model.kg.builtin import build_builtin
from model.kg.dataset import BUILTIN_DATASETS, load_dataset, resolve_dataset


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
