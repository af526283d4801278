"""Numeric-literal features (2 * attributes columns): per attribute sign(x) * log1p(|x|),
z-scored over the entities that have it, clipped to [-NUMERIC_CLIP, NUMERIC_CLIP] (0 where
absent), followed by one presence bit per attribute.

This module is the one home of that transform: the feature files are built with it, and a new
entity's raw values are normalised with it and the training statistics (`numeric_normalisation`,
stored in the bundle's feature map, model.bundle.feature_map).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model.errors import DataError
from model.files import atomic_write
from model.features.store import entity_ids as dataset_entity_ids
from model.features.store import save_lines, write_features
from model.kg.dataset import open_text

log = logging.getLogger(__name__)

NUMERIC_CLIP = 8.0
_FREEBASE_NS = "http://rdf.freebase.com/ns/"


def signed_log(x: np.ndarray) -> np.ndarray:
    """sign(x) * log1p(|x|), elementwise: large magnitudes compressed, sign kept."""
    return np.sign(x) * np.log1p(np.abs(x))


def log_stats(logged: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population std of `logged` (n, k) over the rows where `present`
    (n, k) (a std of 0, or no row, counts as 1): (k,) each."""
    safe = np.maximum(present.sum(axis=0), 1)
    mean = np.where(present, logged, 0.0).sum(axis=0) / safe
    std = np.sqrt(np.where(present, (logged - mean) ** 2, 0.0).sum(axis=0) / safe)
    std[std == 0] = 1.0
    return mean, std


def standardise(logged: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """z-scores of signed-log values with the given statistics, clipped to +-NUMERIC_CLIP."""
    return np.clip((logged - mean) / std, -NUMERIC_CLIP, NUMERIC_CLIP)


def _attribute_matrix(
    values: dict[str, dict[str, list[float]]], entity_ids: Sequence[str], attributes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(raw (n, k) float64, present (n, k) bool, row ids): the entities of `entity_ids` with at
    least one value of an attribute in `attributes`, in that order; repeats are averaged."""
    col = {a: j for j, a in enumerate(attributes)}
    if len(col) != len(attributes):
        raise ValueError("duplicate attribute names")
    ids: list[str] = []
    rows: list[dict[int, float]] = []
    for key in entity_ids:
        row = {col[a]: float(np.mean(v)) for a, v in values.get(key, {}).items() if a in col and len(v) > 0}
        if row:
            ids.append(key)
            rows.append(row)
    raw = np.zeros((len(rows), len(attributes)), dtype=np.float64)
    present = np.zeros((len(rows), len(attributes)), dtype=bool)
    for i, row in enumerate(rows):
        for j, x in row.items():
            raw[i, j] = x
            present[i, j] = True
    return raw, present, ids


def normalise_numeric(
    values: dict[str, dict[str, list[float]]], entity_ids: Sequence[str], attributes: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """Numeric-literal features: (matrix of shape (rows, 2 * len(attributes)) float32, row ids).

    `values[entity][attribute]` lists that entity's values (repeats are averaged). Rows are the
    entities of `entity_ids`, in that order, with at least one value of an attribute in
    `attributes`; others are left out. For attribute j, column j holds sign(x) * log1p(|x|)
    z-scored over the rows that have it (population std; a std of 0 counts as 1), clipped to
    [-8, 8], and 0 where absent; column len(attributes) + j is its presence bit (1.0 / 0.0).
    """
    raw, present, ids = _attribute_matrix(values, entity_ids, attributes)
    if not np.isfinite(raw).all():
        raise ValueError("non-finite numeric value")
    logged = signed_log(raw)
    mean, std = log_stats(logged, present)
    z = np.where(present, standardise(logged, mean, std), 0.0)
    return np.concatenate([z, present.astype(np.float64)], axis=1).astype(np.float32), ids


def numeric_normalisation(numeric_triples: Path, entity_ids: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(attributes, mean, std) of `normalise_numeric` over `entity_ids` for the raw file the
    numeric features were built from: what is needed to normalise a new entity's values alike."""
    values, attributes = read_numeric_triples(Path(numeric_triples))
    raw, present, _ = _attribute_matrix(values, entity_ids, attributes)
    mean, std = log_stats(signed_log(raw), present)
    return attributes, mean, std


def numeric_row(values: dict[str, float], attributes: Sequence[str], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """One entity's raw attribute values -> its feature row (2A,), normalised with the training
    statistics exactly as `normalise_numeric` normalised the training entities. KeyError for an
    attribute not in `attributes` (callers validate names first)."""
    a = len(attributes)
    col = {n: j for j, n in enumerate(attributes)}
    row = np.zeros(2 * a)
    if not values:
        return row
    cols = np.array([col[name] for name in values], dtype=np.int64)
    logged = signed_log(np.array([float(x) for x in values.values()], dtype=np.float64))
    row[cols] = standardise(logged, mean[cols], std[cols])
    row[a + cols] = 1.0
    return row


def _attribute_name(uri: str) -> str:
    """``<http://rdf.freebase.com/ns/people.person.height_meters>`` -> ``people.person.height_meters``."""
    bare = uri.strip().strip("<>")
    return bare.removeprefix(_FREEBASE_NS)


def read_numeric_triples(path: Path) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    """Parse ``entity <TAB> <attribute uri> <TAB> number`` lines.

    Returns (values[entity][attribute] -> list of values, sorted attribute names). Blank lines
    are skipped; a wrong column count or a non-finite / unparsable number is a DataError.
    """
    values: dict[str, dict[str, list[float]]] = {}
    attributes: set[str] = set()
    for lineno, line in enumerate(open_text(path), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 3:
            raise DataError(path, f"expected 3 tab-separated columns (entity, attribute, number), found {len(cols)}", lineno)
        key, attr, text = cols[0].strip(), _attribute_name(cols[1]), cols[2].strip()
        try:
            x = float(text)
        except ValueError:
            raise DataError(path, f"not a number: {text!r}", lineno) from None
        if not np.isfinite(x):
            raise DataError(path, f"non-finite number {text!r}", lineno)
        if not key or not attr:
            raise DataError(path, "empty field", lineno)
        attributes.add(attr)
        values.setdefault(key, {}).setdefault(attr, []).append(x)
    if not values:
        raise DataError(path, "no numeric triples")
    return values, sorted(attributes)


ATTRIBUTES_FILE = "attributes.tsv"


def attributes_file(root: Path) -> Path | None:
    """The dataset's own numeric attributes, ``root/attributes.tsv`` (entity <TAB> attribute
    <TAB> value, written by `imf data import --attributes`), or None when it has none."""
    path = Path(root) / ATTRIBUTES_FILE
    return path if path.is_file() else None


def build_numeric_features(dataset_dir: Path, numeric_triples: Path) -> Path:
    """Turn a numeric-literal file into ``features/numeric.*`` with `normalise_numeric`.

    All attributes of the file are columns (sorted by name), even one no entity of the dataset
    has; ``features/numeric.columns.txt`` names the 2 * attributes columns (the attributes, then
    ``has:<attribute>``). Entities without a value are left out; values of entities outside the
    dataset are ignored.
    """
    dataset_dir, numeric_triples = Path(dataset_dir), Path(numeric_triples)
    values, attributes = read_numeric_triples(numeric_triples)
    entity_ids = dataset_entity_ids(dataset_dir)
    known = set(entity_ids)
    outside = sum(1 for k in values if k not in known)
    matrix, ids = normalise_numeric(values, entity_ids, attributes)
    covered = {a for k in ids for a in values[k]}
    log.info(
        "%s: numeric features for %d entities, %d attributes (%d with no entity of this dataset); %d entities of %s not in the dataset ignored",
        dataset_dir.name, len(ids), len(attributes), len(set(attributes) - covered), outside, numeric_triples.name,
    )
    if not ids:
        raise DataError(numeric_triples, f"no entity of {dataset_dir} has a numeric value")
    path = write_features(dataset_dir, "numeric", matrix, ids)
    columns = list(attributes) + [f"has:{a}" for a in attributes]
    atomic_write((path.with_name("numeric.columns.txt"), save_lines(columns)))
    return path
