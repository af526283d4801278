"""The Python API: the command line's operations as functions, with the same defaults.

    from model import api as imf

    imf.import_graph("examples/fb-1k/triples.csv", "data/fb-1k",
                     entities="examples/fb-1k/entities.csv", attributes="examples/fb-1k/attributes.csv")
    print(imf.check("data/fb-1k"))                        # warnings, as `imf data check`
    bundle = imf.train("data/fb-1k", "artifacts/fb-1k", max_minutes=2)   # any `imf train` option
    print(imf.evaluate(bundle, split="test")["mrr"])
    for row in imf.predict(bundle, "Michelle Rodriguez", "/people/person/nationality", k=3):
        print(row["rank"], row["name"], row["entity"], round(row["score"], 3))

| command line | Python |
|---|---|
| `imf data import --triples F --out DIR ...` | `import_graph(F, DIR, ...)` |
| `imf data check DIR` | `check(DIR)`; `load_dataset(DIR)` |
| `imf train --dataset D --out B --dim 64 ...` | `train(D, B, dim=64, ...)` |
| `imf train --resume RUN` | `train(None, B, resume=RUN)` |
| `imf evaluate B --split test` | `evaluate(B, split="test")` |
| `imf predict B --head H --relation R -k 5` | `predict(B, H, R, k=5)` |
| `imf bundle extras B` / `compact B --out C` | `fit_extras(B)` / `compact_bundle(B, C)` |

Errors are the command line's: `model.errors.IMFError` subclasses with one clear message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.bundle.format import Bundle, load_bundle
from model.errors import IMFError
from model.evaluation.ranking import evaluate as _evaluate
from model.kg.checks import check_dataset
from model.kg.dataset import KGDataset, load_dataset
from model.kg.importer import ImportReport
from model.kg.importer import import_graph as _import_graph
from model.network.imf import IMFConfig
from model.pipeline import (
    compact_bundle,
    fit_extras,
    resolve_resume,
    resolve_run,
    train_to_bundle,
)
from model.pipeline import predict as _predict
from model.training.checkpoint import default_run_dir
from model.training.config import TrainConfig

__all__ = ["Bundle", "KGDataset", "check", "compact_bundle", "evaluate", "fit_extras", "import_graph", "load_bundle", "load_dataset", "predict", "train"]

OPTIONS = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(IMFConfig)}


def import_graph(triples: str | Path, out: str | Path, **options: Any) -> ImportReport:
    """`imf data import`: CSV / TSV files to a dataset directory (model.kg.importer.import_graph:
    valid, test, entities, attributes, name, columns, fractions, seed, overwrite)."""
    paths = {k: Path(v) if k in ("valid", "test", "entities", "attributes") and v is not None else v for k, v in options.items()}
    return _import_graph(Path(triples), Path(out), **paths)


def check(dataset: str | Path | KGDataset) -> list[str]:
    """`imf data check`: the dataset's warnings (one line each); errors raise DataError."""
    return check_dataset(dataset if isinstance(dataset, KGDataset) else load_dataset(dataset))


def train(
    dataset: str | Path | None,
    out: str | Path,
    *,
    config: str | Path | None = None,
    sizing: bool = True,
    resume: str | Path | None = None,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    compact: bool = False,
    report_test: bool = False,
    extras: bool = True,
    track: Sequence[str] = (),
    **options: Any,
) -> Bundle:
    """`imf train`: train on `dataset` (a built-in name or a directory) and write the bundle
    `out`; returns it loaded. `options` are any TrainConfig / IMFConfig fields (dim=64, lr=0.01,
    modalities=["text"], max_minutes=10, ...); the others come from `config` (a TOML file),
    then the sizing of the graph (unless sizing=False), then the defaults, as on the command
    line. A checkpoint goes to `run_dir` (default OUT.run) every epoch; `resume=RUN` continues
    that run exactly (dataset None; only epochs, max_minutes, device, threads and
    eval_batch_size may change)."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise IMFError(f"unknown training option(s) {unknown}; see `imf train --help` (the same names, with _ for -)")
    if resume is not None:
        rdir = Path(resume)
        resolved, _ = resolve_resume(rdir, options, config_file=config)
        ds = None
    else:
        if dataset is None:
            raise IMFError("train: give a dataset (or resume=RUN)")
        resolved, ds = resolve_run({**options, "dataset": str(dataset)}, config_file=config, sizing=sizing)
        rdir = Path(run_dir) if run_dir is not None else default_run_dir(out)
    path = train_to_bundle(
        resolved.train, out, model_config=resolved.model, overwrite=overwrite, progress=progress, compact=compact,
        report_test=report_test, extras=extras, dataset=ds, run_dir=rdir, resume=resume is not None, track=track,
        sources=resolved.sources,
    )
    return load_bundle(path)


def _bundle(bundle: Bundle | str | Path) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


def evaluate(bundle: Bundle | str | Path, split: str = "valid", *, batch_size: int = 256, device: str = "cpu", progress: bool = False) -> dict:
    """`imf evaluate --json`: filtered MRR, MR, Hits@1/3/10, per direction and per branch."""
    if split not in ("valid", "test"):
        raise IMFError(f"split {split!r}: valid or test")
    b = _bundle(bundle)
    report = _evaluate(b.model.to(device), b.triples[split], b.known, split=split, batch_size=batch_size, device=device, progress=progress)
    report["model"] = b.fingerprint
    return report


def predict(bundle: Bundle | str | Path, head: str, relation: str, *, k: int = 10, direction: str = "tail", filter_known: bool = True) -> list[dict]:
    """`imf predict --json`: the top k answers to (head, relation, ?) (direction "head":
    (?, relation, head)), every entity scored by the full model; known facts filtered, or kept
    and flagged. head and relation: ids or exact names (an ambiguous name raises
    AmbiguousNameError with the candidates). Each answer: rank, entity (id), name, score, known."""
    b = _bundle(bundle)
    vocab = b.vocab
    return [
        {"rank": p.rank, "entity": vocab.entity_ids[p.entity], "name": vocab.entity_names[p.entity], "score": p.score, "known": p.known}
        for p in _predict(b, head, relation, k=k, direction=direction, filter_known=filter_known)
    ]
