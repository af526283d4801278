"""Fit a bundle's optional extras after training: the probability calibration
(model.calibration, on the validation split) and the feature map for new entities
(model.inductive, on the trained entities' features). Neither reads the test split.

    imf bundle extras artifacts/default                       # both, features from data/<dataset>
    imf bundle extras RUN --numeric-source FB15K_NumericalTriples.txt   # + raw numeric values
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from model.bundle import add_extras, load_bundle
from model.calibration import collect_samples, fit_calibration, relation_families
from model.data import load_dataset
from model.errors import DataError
from model.inductive import fit_feature_map
from model.triples import AnswerIndex

log = logging.getLogger(__name__)


def fit_extras(path: str | Path, *, dataset: str | Path | None = None, numeric_source: Path | None = None, feature_map: bool = True) -> dict:
    """Fit and add the extras to the bundle at `path`; returns their summary (also written to
    the manifest under "extras"). dataset: where the trained entities' features are (default:
    the bundle's dataset name); the feature map is skipped for a model without modalities."""
    bundle = load_bundle(path)
    model = bundle.model
    n, r = bundle.num_entities, bundle.num_relations
    train, valid = bundle.triples["train"], bundle.triples["valid"]
    families = relation_families(train, r)
    samples = collect_samples(model, valid, AnswerIndex(train, n, r), families)
    cal = fit_calibration(samples, families)
    summary: dict = {"calibration": {"method": cal.method, **{k: v for k, v in cal.report.items() if k != "validation"}, "validation": cal.report["validation"]}}
    fmap = None
    if feature_map and model.modalities:
        ds = load_dataset(dataset or bundle.name)
        if ds.entity_ids != bundle.entity_ids:
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
            from model.features import numeric_normalisation

            attrs, mean, std = numeric_normalisation(numeric_source, bundle.entity_ids)
            if 2 * len(attrs) != model.cfg.modalities["numeric"]:
                raise DataError(numeric_source, f"{len(attrs)} attributes give {2 * len(attrs)} columns, the model's numeric features have {model.cfg.modalities['numeric']}")
            numeric = (attrs, mean, std)
        fmap = fit_feature_map(model, feats, present, valid, AnswerIndex(np.concatenate([train, valid]), n, r), numeric=numeric)
        summary["feature_map"] = {"variant": fmap.variant, "numeric_attributes": len(fmap.numeric_attributes), **fmap.report}
    add_extras(path, calibration=cal, feature_map=fmap, summary=summary)
    return summary
