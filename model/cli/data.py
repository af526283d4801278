"""`imf data` (build, import, check) and `imf features` (text, visual, numeric)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.errors import DataError
from model.features import numeric as numeric_features
from model.features import text as text_features
from model.features import visual as visual_features
from model.kg.builtin import build_builtin
from model.kg.checks import check_dataset
from model.kg.dataset import BUILTIN_DATASETS, load_dataset, resolve_dataset
from model.kg.importer import import_graph
from model.kg.split import parse_fractions


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build or check datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="convert a built-in dataset's raw release into data/NAME")
    b.add_argument("name", choices=BUILTIN_DATASETS)
    b.add_argument("--source", type=Path, default=None, help="folder of the raw releases (default: $IMF_SHARED_DATASETS, else shared/datasets beside the checkout)")
    b.add_argument("--out", type=Path, default=None)
    b.set_defaults(handler=cmd_data_build)
    i = dsub.add_parser(
        "import",
        help="a graph of your own, from CSV/TSV files, as a dataset directory",
        description="Read triples (and optionally entity names and numeric attributes) from CSV or TSV files "
        "(tab, comma or semicolon; a header row is detected), split them so that every entity and relation "
        "of valid and test occurs in train, and write a dataset directory for `imf train --dataset DIR`.",
    )
    i.add_argument("--triples", type=Path, required=True, help="every triple (split here), or the training triples with --valid/--test")
    i.add_argument("--valid", type=Path, default=None, help="validation triples (with --test): the given splits are repaired, not re-split")
    i.add_argument("--test", type=Path, default=None, help="test triples (with --valid)")
    i.add_argument("--entities", type=Path, default=None, help="id, name[, description] rows")
    i.add_argument("--attributes", type=Path, default=None, help="entity, attribute, numeric value rows (-> attributes.tsv)")
    i.add_argument("--out", type=Path, required=True, help="the dataset directory to write")
    i.add_argument("--name", default=None, help="the dataset's name (default: the --out folder's name)")
    i.add_argument(
        "--columns", default=None,
        help="the triple files' columns: roles in file order (e.g. head,tail,relation; '-' skips a column), "
        "or the header's names of the head, relation and tail columns (default: the header's names, else head,relation,tail)",
    )
    i.add_argument("--split", default=None, help="train,valid,test fractions when only --triples is given (default 0.8,0.1,0.1)")
    i.add_argument("--seed", type=int, default=0, help="the split's shuffle seed")
    i.add_argument("--overwrite", action="store_true", help="replace an existing dataset directory --out")
    i.set_defaults(handler=cmd_data_import)
    c = dsub.add_parser("check", help="load and validate a dataset, print its statistics (JSON) and warnings (stderr)")
    c.add_argument("dataset")
    c.set_defaults(handler=cmd_data_check)


def cmd_data_build(args: argparse.Namespace) -> int:
    out = build_builtin(args.name, args.source, args.out)
    print(f"wrote {out}")
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    if args.split is not None and args.valid is not None:
        raise ValueError("--split applies when only --triples is given; with --valid and --test the splits are kept")
    report = import_graph(
        args.triples,
        args.out,
        valid=args.valid,
        test=args.test,
        entities=args.entities,
        attributes=args.attributes,
        name=args.name,
        columns=args.columns,
        fractions=parse_fractions(args.split or "0.8,0.1,0.1"),
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print("\n".join(report.summary()))
    _print_warnings(report.warnings)
    print("next:")
    print("\n".join(f"  {cmd}" for cmd in report.next_commands()))
    return 0


def _print_warnings(warnings: list[str]) -> None:
    """The checks' warnings on stderr: stdout stays the command's result (JSON for check)."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_data_check(args: argparse.Namespace) -> int:
    ds = load_dataset(args.dataset)
    warnings = check_dataset(ds)
    _print_warnings(warnings)
    print(json.dumps({
        "name": ds.name,
        "entities": ds.num_entities,
        "relations": ds.num_relations,
        "triples": {s: len(ds.split(s)) for s in ("train", "valid", "test")},
        "modalities": {m: {"dim": f.dim, "coverage": f.coverage} for m, f in ds.features.items()},
        "default_modalities": ds.default_modalities,
        "fingerprint": ds.fingerprint,
        "warnings": warnings,
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
    n.add_argument(
        "--triples", type=Path, default=None,
        help="entity <TAB> attribute <TAB> value file (default: the dataset's attributes.tsv)",
    )
    n.set_defaults(handler=cmd_features)


def cmd_features(args: argparse.Namespace) -> int:
    root = resolve_dataset(args.dataset)
    if args.feature_command == "text":
        out = text_features.build_text_features(root)
    elif args.feature_command == "visual":
        out = visual_features.build_visual_features(root, args.images)
    else:
        source = args.triples or numeric_features.attributes_file(root)
        if source is None:
            raise DataError(
                root / numeric_features.ATTRIBUTES_FILE,
                "missing: pass --triples FILE (entity <TAB> attribute <TAB> value), or import the graph with "
                "`imf data import --attributes FILE`, which writes it",
            )
        out = numeric_features.build_numeric_features(root, source)
    print(f"wrote {out}")
    return 0
