"""Writing a modality's feature files: validated, both files complete before either replaces
its predecessor (model.files.atomic_write)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import DataError
from model.files import atomic_write
from model.kg.dataset import check_finite, check_modality_name, find_file, load_dataset, read_vocab

log = logging.getLogger(__name__)

NUM_THREADS = 2  # CPU threads for the encoders (the project's machines have 2 cores)


def save_npy(array: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file handle: np.save would append ".npy" to a bare name
            np.save(fh, array, allow_pickle=False)

    return write


def save_lines(lines: Sequence[str]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    return write


def entity_ids(dataset_dir: Path) -> list[str]:
    """The dataset's entity ids in loader order (entities.tsv, else grown from the splits)."""
    ent_file = find_file(dataset_dir, "entities.tsv")
    if ent_file is not None:
        return read_vocab(ent_file, "entity")[0]
    return load_dataset(dataset_dir, with_features=False).entity_ids


def write_features(
    dataset_dir: Path, modality: str, matrix: np.ndarray, ids: list[str], *, dtype: Any = np.float16
) -> Path:
    """Write `matrix` (rows, dim) and the entity id of each row as features of `modality`.

    Writes ``features/<modality>.npy`` (cast to `dtype`) and ``features/<modality>.ids.txt``
    atomically, and removes a stale ``<modality>.mask.npy`` (every listed row is present).
    Raises DataError, writing nothing, if the name is invalid, `matrix` is not 2-D, its row count
    differs from ``len(ids)``, an id is duplicated or not an entity of the dataset, or a value is
    not finite (before or after the cast). Returns the path of the ``.npy`` file.
    """
    dataset_dir = Path(dataset_dir)
    feat_dir = dataset_dir / "features"
    target = feat_dir / f"{modality}.npy"
    check_modality_name(target, modality)
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise DataError(target, f"expected a 2-D matrix (rows, dim), got shape {matrix.shape}")
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise DataError(target, f"expected a numeric matrix, got dtype {matrix.dtype}")
    ids = [str(i) for i in ids]
    if matrix.shape[0] != len(ids):
        raise DataError(target, f"matrix has {matrix.shape[0]} rows but {len(ids)} entity ids were given (one per row)")
    if matrix.shape[0] == 0:
        raise DataError(target, "no rows: no entity has this modality")
    known = set(entity_ids(dataset_dir))
    seen: set[str] = set()
    for row, key in enumerate(ids):
        if key not in known:
            raise DataError(target, f"row {row}: {key!r} is not an entity of {dataset_dir}")
        if key in seen:
            raise DataError(target, f"row {row}: duplicate entity {key!r}")
        seen.add(key)
    with np.errstate(over="ignore"):  # an overflow to inf is reported below, not warned about
        converted = matrix.astype(dtype)
    for label, values in (("", matrix), (f" after conversion to {np.dtype(dtype).name}", converted)):
        check_finite(target, values, ids, label=label)
    feat_dir.mkdir(parents=True, exist_ok=True)
    # Both files are complete under temporary names before either replaces its predecessor.
    atomic_write(
        (feat_dir / f"{modality}.ids.txt", save_lines(ids)),
        (target, save_npy(np.ascontiguousarray(converted))),
    )
    (feat_dir / f"{modality}.mask.npy").unlink(missing_ok=True)
    log.info("wrote %s: %d entities x %d (%s)", target, matrix.shape[0], matrix.shape[1], np.dtype(dtype).name)
    return target
