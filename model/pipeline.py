"""The operations on whole runs and bundles, composed from the layers below: what `imf train`,
`imf bundle compact`, `imf bundle extras` and `imf predict` call, and the Python entry points.

    from model.pipeline import train_to_bundle, predict
    from model.training.config import TrainConfig
    from model.network.imf import IMFConfig

    train_to_bundle(TrainConfig(dataset="wn9-img", epochs=20), "artifacts/wn", model_config=IMFConfig(dim=64))
    bundle = load_bundle("artifacts/wn")            # model.bundle.format
    predict(bundle, "dog", "_hypernym", k=5)

- `train_to_bundle`: train (model selection on the validation split; with a run directory,
  checkpoints to resume from and per-epoch metrics), optionally compact, record the test metrics
  once after selection, write the bundle atomically, then fit its extras.
- `compact_bundle`: a serving copy (int8 tables and cores, float16 weights) with its metrics
  re-measured on exactly the weights it will serve.
- `fit_extras`: the probability calibration (validation split) and the new-entity feature map
  (the trained entities' features). Neither reads the test split.
- `predict`: exhaustive top-k for a query given by ids or names (the slow, exact path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from model.bundle.calibration import collect_samples, fit_calibration, relation_families
from model.bundle.feature_map import fit_feature_map
from model.bundle.format import (
    Bundle,
    add_extras,
    check_writable,
    load_bundle,
    read_manifest,
    save_bundle,
)
from model.bundle.quantize import as_served
from model.errors import BundleError, DataError, IMFError
from model.evaluation.predict import (
    Ranked,
    exhaustive_scores,
    known_mask,
    top_k_with_filter,
)
from model.evaluation.ranking import evaluate
from model.features.numeric import attributes_file, numeric_normalisation
from model.features.prepare import ensure_features
from model.files import atomic_write
from model.kg.dataset import KGDataset, load_dataset, resolve_dataset
from model.kg.triples import AnswerIndex, query_relation
from model.network.imf import IMFConfig
from model.training.checkpoint import (
    RUN_CONFIG,
    clear_run_dir,
    has_checkpoint,
    load_checkpoint,
    prepare_run_dir,
)
from model.training.config import TrainConfig
from model.training.loop import (
    RESUMABLE_CHANGES,
    EpochHook,
    bundle_model_settings,
    model_settings,
    train,
)
from model.training.run_config import (
    ResolvedConfig,
    read_config_file,
    resolve,
    resume_config,
    sized_defaults,
)
from model.training.tracking import close_trackers, open_trackers

log = logging.getLogger(__name__)

TOP_METRICS = ("mrr", "hits@1", "hits@3", "hits@10")  # what a manifest keeps of metrics it supersedes


def resolve_run(
    options: Mapping[str, object],
    *,
    config_file: str | Path | None = None,
    sizing: bool = True,
    load_features: bool = True,
) -> tuple[ResolvedConfig, KGDataset | None]:
    """The configuration of a fresh run: each TrainConfig / IMFConfig field from, first match
    wins, `options` (what the user gave: the command line, or keyword arguments in Python), the
    TOML `config_file`, the --init-from bundle's model (model fields), the sizing of the graph
    (model.training.sizing; unless `sizing` is False), else the dataclass default. Returns the
    resolved configuration (with each value's source) and the dataset when sizing loaded it
    (with its features if `load_features`), so that training need not load it again."""
    file_values = read_config_file(config_file) if config_file else {}
    dataset_name = options.get("dataset", file_values.get("dataset"))
    init_from = options.get("init_from", file_values.get("init_from"))
    bundle_model = model_settings(bundle_model_settings(str(init_from))) if init_from else None
    sized: dict[str, object] = {}
    graph = ""
    ds = None
    if sizing and dataset_name is not None:
        ds = load_dataset(str(dataset_name), with_features=load_features)
        sized, graph = sized_defaults(ds.num_entities, ds.num_relations, len(ds.train))
    resolved = resolve(flags=options, file=file_values, file_name=config_file, sized=sized, bundle_model=bundle_model, require=("dataset",))
    used = resolved.given("sized")
    if used:
        log.info("sized for %s: %s (the rule: docs/benchmarks.md section 8; --no-sizing: the plain defaults)",
                 graph, ", ".join(f"{k} {v}" for k, v in used.items()))
    return resolved, ds if load_features else None


def resolve_resume(run_dir: str | Path, options: Mapping[str, object], *, config_file: str | Path | None = None) -> tuple[ResolvedConfig, dict]:
    """The configuration of a resumed run: the checkpoint's in `run_dir`, with the changes
    `options` and `config_file` make, refused unless they are among RESUMABLE_CHANGES
    (model.training.run_config.resume_config). Returns it and the checkpoint."""
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    file_values = read_config_file(config_file) if config_file else {}
    resolved = resume_config(ckpt, flags=options, file=file_values, where=run_dir / "checkpoint.pt", changeable=RESUMABLE_CHANGES)
    return resolved, ckpt


def train_to_bundle(
    cfg: TrainConfig,
    out: str | Path,
    *,
    model_config: IMFConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    compact: bool = False,
    report_test: bool = False,
    extras: bool = True,
    dataset: KGDataset | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    track: Sequence[str] = (),
    sources: Mapping[str, str] | None = None,
    on_epoch: Sequence[EpochHook] = (),
) -> Path:
    """Train and write the bundle atomically to `out` (see model.bundle.format).

    model_config: the model's hyperparameters (default IMFConfig(); with cfg.init_from the
    bundle's; resuming, the checkpoint's).
    compact: write a compact bundle (model.bundle.quantize); the recorded validation
    metrics are then re-measured on the compacted weights exactly as they will be served.
    report_test: after model selection is over, evaluate the selected model once on the test
    split and record it in the manifest (`metrics.test`); nothing is chosen by it.
    extras: then fit the bundle's calibration and feature map (`fit_extras`; valid split only).
    dataset: the loaded `cfg.dataset`, when the caller has it already.
    run_dir: the run directory (model.training.checkpoint: a checkpoint and metrics.csv after
    every epoch, config.toml); None: none (`imf train` uses OUT.run). With overwrite, a fresh
    run clears what an earlier one left there.
    resume: continue the run in `run_dir` from its checkpoint (model.training.loop.train); the
    bundle that run wrote at `out` when interrupted is replaced without `overwrite`.
    track: trackers to log each epoch to (model.training.tracking: "tensorboard", "mlflow"),
    storing into `run_dir`.
    sources: where each configuration value came from (model.training.run_config), for the
    manifest and config.toml.
    on_epoch: more per-epoch hooks (see `train`).

    Stopped by Ctrl-C after the first validation, the run still writes the best model so far
    (manifest training.stopped_by = "interrupted", no extras fitted) and returns its path.
    """
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else None
    if track and run_dir is None:
        raise IMFError("--track needs a run directory to store into (--run-dir)")
    if resume and run_dir is not None and not overwrite:
        overwrite = _written_by_run(out, run_dir)  # its own bundle of an interrupted part
    check_writable(out, overwrite=overwrite)  # fail before hours of training, not after
    model_settings_given = model_config
    # Features on the way: those the dataset's files call for (attributes.tsv, names and
    # descriptions) and that were never built; a no-op for the built-in datasets.
    if ensure_features(cfg.dataset, cfg.modalities) and dataset is not None:
        dataset = load_dataset(cfg.dataset)  # loaded before they existed
    created = run_dir is not None and not run_dir.exists()
    try:
        if run_dir is not None:
            if not resume:
                prepare_run_dir(run_dir, overwrite=overwrite)
            if model_config is not None:
                resolved = ResolvedConfig(train=cfg, model=model_config, sources=dict(sources or {}))
                text = resolved.to_toml(header=f"run {run_dir}, bundle {out}")
                atomic_write((run_dir / RUN_CONFIG, lambda tmp: tmp.write_text(text, encoding="utf-8")))
        # Absolute paths: a resumed run may start from another folder.
        run_info = {"out": str(out.resolve()), "compact": compact, "report_test": report_test, "extras": extras, "track": list(track), "sources": dict(sources or {})}
        trackers = open_trackers(track, run_dir, {**dataclasses.asdict(cfg), **(dataclasses.asdict(model_config) if model_config else {})}) if track else []  # type: ignore[arg-type]
        try:
            result = train(
                cfg, dataset, model_config=model_settings_given, progress=progress, run_dir=run_dir, resume=resume,
                on_epoch=[*trackers, *on_epoch], run_info=run_info,
            )
        finally:
            close_trackers(trackers)
    except BaseException:
        if run_dir is not None and not resume and not has_checkpoint(run_dir):
            # Not one epoch done, nothing to resume: a failed start (bad data, an unknown
            # modality, a missing tracker package, Ctrl-C) leaves no run directory behind.
            clear_run_dir(run_dir)
            if created:
                with contextlib.suppress(OSError):
                    run_dir.rmdir()  # only if empty: never anything of the user's
        raise
    model = result.model
    ds = result.dataset
    metrics = {"valid": result.valid_metrics}
    known_index = AnswerIndex(ds.all_triples(), ds.num_entities, ds.num_relations)
    if compact:
        model = as_served(model)
        metrics["valid"] = evaluate(model, ds.valid, known_index, split="valid", batch_size=cfg.eval_batch_size, progress=progress)
        metrics["before_compaction"] = {"valid": {k: result.valid_metrics[k] for k in TOP_METRICS}}
        log.info("compact bundle: valid MRR %.4f (%.4f before compaction)", metrics["valid"]["mrr"], result.valid_metrics["mrr"])
    if report_test:
        metrics["test"] = evaluate(model, ds.test, known_index, split="test", batch_size=cfg.eval_batch_size, progress=progress)
        log.info("test MRR of the selected model %.4f", metrics["test"]["mrr"])
    training = {
        **dataclasses.asdict(result.train_config),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
        "stopped_by": result.stopped_by,
        "history": result.history,
        # The model hyperparameters as the run resolved them, and where each value (training and
        # model) came from: flag, config, bundle, sized, checkpoint or default.
        "model": model_settings(result.model_config),
        "sources": dict(sources or {}),
        **({"run_dir": str(run_dir.resolve())} if run_dir is not None else {}),
    }
    path = save_bundle(
        out,
        model,
        ds.vocabulary(),
        ds.splits(),
        dataset=ds.info(),
        training=training,
        metrics=metrics,
        overwrite=overwrite,
        compact=compact,
    )
    if extras and result.stopped_by == "interrupted":
        # Whoever pressed Ctrl-C wants the run to end now: the extras can follow later.
        log.info("bundle extras not fitted (interrupted); run: imf bundle extras %s", path)
    elif extras:
        # The calibration (valid split) and the new-entity feature map; the bundle is already
        # complete without them, so a failure here is reported and loses nothing.
        try:
            # With the raw attribute values of an imported dataset, new entities may give
            # numeric attributes (the feature map keeps their statistics).
            fit_extras(path, dataset=cfg.dataset, numeric_source=attributes_file(resolve_dataset(cfg.dataset)))
        except Exception as exc:
            log.error("bundle extras not fitted (%s); run: imf bundle extras %s", exc, path)
    return path


def _written_by_run(out: Path, run_dir: Path) -> bool:
    """Whether the bundle at `out` was written by the run in `run_dir` (its manifest says so):
    resuming that run may replace it."""
    try:
        recorded = read_manifest(out).get("training", {}).get("run_dir")
    except BundleError:
        return False
    return recorded is not None and Path(recorded).resolve() == run_dir.resolve()


def compact_bundle(src: str | Path, out: str | Path, *, report_test: bool = False, overwrite: bool = False, progress: bool = False) -> Path:
    """Write a compact copy of the bundle at `src` to `out` (see `save_bundle(compact=True)`),
    with its validation metrics (and, with report_test, its test metrics) re-measured on the
    compacted weights; the source's own metrics are kept under `before_compaction`."""
    bundle = load_bundle(src)
    check_writable(Path(out), overwrite=overwrite)
    served = as_served(bundle.model)
    metrics = {"valid": evaluate(served, bundle.triples["valid"], bundle.known, split="valid", progress=progress)}
    if report_test:
        metrics["test"] = evaluate(served, bundle.triples["test"], bundle.known, split="test", progress=progress)
    metrics["before_compaction"] = {
        split: {k: m[k] for k in TOP_METRICS} for split, m in bundle.manifest.get("metrics", {}).items() if isinstance(m, dict) and "mrr" in m
    }
    return save_bundle(
        out, served, bundle.vocab, bundle.triples, dataset=bundle.dataset,
        training=bundle.manifest.get("training", {}), metrics=metrics, overwrite=overwrite, compact=True,
        extra_files=bundle.extra_file_bytes(), extras=bundle.manifest.get("extras"),
    )


def fit_extras(path: str | Path, *, dataset: str | Path | None = None, numeric_source: Path | None = None, feature_map: bool = True) -> dict:
    """Fit and add the extras to the bundle at `path`; returns their summary (also written to
    the manifest under "extras"). dataset: where the trained entities' features are (default:
    the bundle's dataset name); the feature map is skipped for a model without modalities.

        imf bundle extras artifacts/default                       # both, features from data/<dataset>
        imf bundle extras RUN --numeric-source FB15K_NumericalTriples.txt   # + raw numeric values
    """
    bundle = load_bundle(path)
    model = bundle.model
    n, r = bundle.num_entities, bundle.num_relations
    train_triples, valid = bundle.triples["train"], bundle.triples["valid"]
    families = relation_families(train_triples, r)
    samples = collect_samples(model, valid, AnswerIndex(train_triples, n, r), families)
    cal = fit_calibration(samples, families)
    summary: dict = {"calibration": {"method": cal.method, **{k: v for k, v in cal.report.items() if k != "validation"}, "validation": cal.report["validation"]}}
    fmap = None
    if feature_map and model.modalities:
        ds = load_dataset(dataset or bundle.dataset.get("name", ""))
        if ds.entity_ids != bundle.vocab.entity_ids:
            raise DataError(ds.root / "entities.tsv", f"entities differ from the bundle's {path}: not the dataset it was trained on")
        missing = [m for m in model.modalities if m not in ds.features]
        if missing:
            raise DataError(ds.root / "features", f"no features for modalities {missing} of the bundle")
        feats = {m: ds.features[m].matrix for m in model.modalities}
        present = {m: ds.features[m].present for m in model.modalities}
        for m in model.modalities:
            if not np.array_equal(present[m], model.present(m).numpy()):
                raise DataError(ds.root / "features" / f"{m}.ids.txt", "covers other entities than the bundle's model")
        numeric = None
        if numeric_source is not None and "numeric" in model.modalities:
            attrs, mean, std = numeric_normalisation(numeric_source, bundle.vocab.entity_ids)
            if 2 * len(attrs) != model.cfg.modalities["numeric"]:
                raise DataError(numeric_source, f"{len(attrs)} attributes give {2 * len(attrs)} columns, the model's numeric features have {model.cfg.modalities['numeric']}")
            numeric = (attrs, mean, std)
        fmap = fit_feature_map(model, feats, present, valid, AnswerIndex(np.concatenate([train_triples, valid]), n, r), numeric=numeric)
        summary["feature_map"] = {"variant": fmap.variant, "numeric_attributes": len(fmap.numeric_attributes), **fmap.report}
    add_extras(path, calibration=cal, feature_map=fmap, summary=summary)
    return summary


def predict(bundle: Bundle, head: str, relation: str, *, k: int = 10, direction: str = "tail", filter_known: bool = True) -> list[Ranked]:
    """Exhaustive top-k for a query given by ids or names (model.kg.vocab.Vocabulary's lookups):
    every entity scored with the full model, known facts filtered or flagged."""
    e = bundle.vocab.entity(head)
    r = query_relation(bundle.vocab.relation(relation), direction, bundle.num_relations)
    scores = exhaustive_scores(bundle.model, e, r)
    known = known_mask(bundle.known.answers_of(e, r), len(scores))
    return top_k_with_filter(scores, known, k, filter_known=filter_known)
