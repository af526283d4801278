"""The on-disk knowledge-graph format and its strict loader.

A dataset is a directory (see docs/data-format.md for the full specification)::

    my_kg/
      dataset.json              optional: {"name", "description", "default_modalities", "sources"}
      entities.tsv              optional: id <TAB> name [<TAB> description], one entity a line
      relations.tsv             optional: id <TAB> name
      train.tsv[.gz]            head <TAB> relation <TAB> tail, by id (or name-free labels)
      valid.tsv[.gz]
      test.tsv[.gz]
      features/<modality>.npy        float matrix, shape (rows, dim); loaded with allow_pickle=False
      features/<modality>.ids.txt    the entity id of each row, one a line
      features/<modality>.mask.npy   optional bool vector (rows,): False marks a placeholder row

Entities absent from a modality's ids file, or whose mask entry is False, lack that modality; the
model then uses a learned "missing" vector for them. Every check names the file and line at fault
and raises `DataError`; nothing is modified or written while loading.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.errors import DataError, UnknownNameError
from model.files import sha256_files
from model.kg.vocab import Vocabulary, training_degree

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
BUILTIN_DATASETS = ("fb15k-237", "db15k", "wn9-img")
_MODALITY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Names the model reserves for itself (model.network.imf: the structure and fused branches, and
# the decision-fusion output); a feature modality may not use them.
RESERVED_MODALITY_NAMES = ("structure", "multimodal", "fused")


def check_modality_name(path: Path, name: str) -> None:
    """DataError (naming `path`) unless `name` can name a feature modality."""
    if not _MODALITY_NAME.match(name) or name in RESERVED_MODALITY_NAMES:
        raise DataError(path, f"invalid modality name {name!r}: use lowercase letters, digits, '_', not {RESERVED_MODALITY_NAMES}")


@dataclass
class ModalityFeatures:
    """Frozen input features of one modality, aligned to the dataset's entity order.

    matrix: shape (num_entities, dim), float32; rows of entities lacking the modality are zero.
    present: shape (num_entities,), bool.
    """

    name: str
    matrix: np.ndarray
    present: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def coverage(self) -> int:
        return int(self.present.sum())


@dataclass
class KGDataset:
    """A loaded, validated knowledge graph.

    train / valid / test: int64 arrays of shape (n, 3), columns (head, relation, tail) as indices
    into `entity_ids` / `relation_ids`.
    """

    name: str
    root: Path
    entity_ids: list[str]
    entity_names: list[str]
    entity_descriptions: list[str]
    relation_ids: list[str]
    relation_names: list[str]
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    features: dict[str, ModalityFeatures] = field(default_factory=dict)
    default_modalities: list[str] | None = None
    fingerprint: str = ""

    @property
    def num_entities(self) -> int:
        return len(self.entity_ids)

    @property
    def num_relations(self) -> int:
        return len(self.relation_ids)

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise UnknownNameError("split", name, SPLITS, list_known=True)
        return getattr(self, name)

    def splits(self) -> dict[str, np.ndarray]:
        """{"train", "valid", "test"} -> (n, 3) triples."""
        return {s: self.split(s) for s in SPLITS}

    def info(self) -> dict[str, str]:
        """{"name", "fingerprint"}: what a bundle records of the dataset it was trained on."""
        return {"name": self.name, "fingerprint": self.fingerprint}

    def vocabulary(self) -> Vocabulary:
        """The entities and relations with their names and lookups (model.kg.vocab)."""
        return Vocabulary(
            self.entity_ids, self.entity_names, self.entity_descriptions, self.relation_ids, self.relation_names,
            entity_weights=training_degree(self.train, self.num_entities),
        )

    def all_triples(self) -> np.ndarray:
        """Every known triple (train + valid + test), shape (n, 3); used for filtered ranking."""
        return np.concatenate([self.train, self.valid, self.test], axis=0)

    def select_modalities(self, names: list[str] | None) -> dict[str, ModalityFeatures]:
        """The feature modalities to train with: `names`, or the dataset default, or all.

        Raises UnknownNameError naming the modality and the available ones.
        """
        if names is None:
            names = self.default_modalities if self.default_modalities is not None else sorted(self.features)
        chosen: dict[str, ModalityFeatures] = {}
        for n in names:
            if n not in self.features:
                raise UnknownNameError("modality", n, self.features, list_known=True)
            chosen[n] = self.features[n]
        return chosen


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def open_text(path: Path) -> Iterator[str]:
    """Yield the lines of a UTF-8 text file (gzip if it ends in .gz), without line endings.

    A UTF-8 byte-order mark at the start is dropped ("utf-8-sig"): editors on Windows add one,
    and it would otherwise become an invisible part of the first id (its lookups then fail far
    from the cause)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:  # type: ignore[operator]
            for line in fh:
                yield line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except (OSError, EOFError) as exc:
        raise DataError(path, f"cannot read: {exc}") from exc


def find_file(root: Path, stem: str) -> Path | None:
    """`root/stem` or `root/stem.gz`, whichever exists."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_table(path: Path, min_cols: int, max_cols: int) -> list[tuple[int, list[str]]]:
    """Rows of a tab-separated file as (line number, fields); blank lines are skipped."""
    rows: list[tuple[int, list[str]]] = []
    for lineno, line in enumerate(open_text(path), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if not (min_cols <= len(cols) <= max_cols):
            expect = str(min_cols) if min_cols == max_cols else f"{min_cols} to {max_cols}"
            raise DataError(path, f"expected {expect} tab-separated columns, found {len(cols)}", lineno)
        if any(not c.strip() for c in cols[:min_cols]):
            raise DataError(path, "empty field", lineno)
        rows.append((lineno, [c.strip() for c in cols]))
    return rows


def read_vocab(path: Path, kind: str) -> tuple[list[str], list[str], list[str]]:
    """ids, names, descriptions from an `entities.tsv` / `relations.tsv` file."""
    ids: list[str] = []
    names: list[str] = []
    descs: list[str] = []
    seen: dict[str, int] = {}
    for lineno, cols in read_table(path, 1, 3):
        key = cols[0]
        if key in seen:
            raise DataError(path, f"duplicate {kind} id {key!r} (first on line {seen[key]})", lineno)
        seen[key] = lineno
        ids.append(key)
        names.append(cols[1] if len(cols) > 1 and cols[1] else key)
        descs.append(cols[2] if len(cols) > 2 else "")
    return ids, names, descs


def _read_triples(
    path: Path,
    ent_index: dict[str, int],
    rel_index: dict[str, int],
    *,
    vocab_files: dict[str, Path | None],
    seen_in_train: tuple[set[int], set[int]] | None,
) -> np.ndarray:
    """Parse one split. `vocab_files` ({"entity", "relation"} -> entities.tsv / relations.tsv or
    None): an id missing from a listed vocabulary is an error naming that file too; without
    one, train's unknown ids are added to the vocabulary. `seen_in_train` (entities, relations,
    for valid / test) makes any entity or relation that never occurs in train an error."""
    out: list[tuple[int, int, int]] = []
    first_line: dict[tuple[int, int, int], int] = {}
    for lineno, (h, r, t) in read_table(path, 3, 3):
        ids = []
        for value, index, kind in ((h, ent_index, "entity"), (r, rel_index, "relation"), (t, ent_index, "entity")):
            if value not in index:
                listed_in = vocab_files[kind]
                if listed_in is not None:
                    # Name the vocabulary file as well: the cause may be there (a typo, a
                    # missing line), not in the split.
                    raise DataError(path, f"{kind} {value!r} is not listed in {listed_in}", lineno)
                if seen_in_train is not None:
                    raise DataError(path, f"{kind} {value!r} does not occur in the train split", lineno)
                index[value] = len(index)
            ids.append(index[value])
        triple = (ids[0], ids[1], ids[2])
        if seen_in_train is not None:
            ents, rels = seen_in_train
            for value, idx, pool, kind in ((h, ids[0], ents, "entity"), (r, ids[1], rels, "relation"), (t, ids[2], ents, "entity")):
                if idx not in pool:
                    raise DataError(path, f"{kind} {value!r} does not occur in the train split", lineno)
        if triple in first_line:
            raise DataError(path, f"duplicate triple {h} {r} {t} (first on line {first_line[triple]})", lineno)
        first_line[triple] = lineno
        out.append(triple)
    if not out:
        raise DataError(path, "no triples")
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def check_finite(path: Path, values: np.ndarray, ids: Sequence[str], *, mask: np.ndarray | None = None, label: str = "") -> None:
    """DataError naming the first NaN/inf cell of `values` (n, f): row, entity ids[row], column,
    and how many rows have one. mask (n,) bool: only those rows count. label: appended to the
    value (say, after which conversion)."""
    bad = ~np.isfinite(values.astype(np.float64, copy=False))  # any numeric dtype, float16 included
    if mask is not None:
        bad &= mask[:, None]
    if bad.any():
        row, col = (int(x) for x in np.argwhere(bad)[0])
        raise DataError(
            path,
            f"non-finite value {values[row, col]}{label} at row {row} (entity {ids[row]!r}), column {col}; "
            f"{int(bad.any(axis=1).sum())} rows affected",
        )


def load_feature_file(
    matrix_path: Path, ids_path: Path, mask_path: Path | None, ent_index: dict[str, int], name: str
) -> ModalityFeatures:
    """Load one modality's matrix + row-order file (+ optional mask), aligned to `ent_index`."""
    try:
        raw = np.load(matrix_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(matrix_path, f"not a readable .npy array: {exc}") from exc
    if raw.ndim != 2 or raw.shape[1] == 0:
        raise DataError(matrix_path, f"expected a 2-D matrix (rows, dim), found shape {raw.shape}")
    if not np.issubdtype(raw.dtype, np.floating) and not np.issubdtype(raw.dtype, np.integer):
        raise DataError(matrix_path, f"expected a numeric matrix, found dtype {raw.dtype}")
    rows = [(lineno, line.strip()) for lineno, line in enumerate(open_text(ids_path), start=1) if line.strip()]
    if len(rows) != raw.shape[0]:
        raise DataError(
            matrix_path, f"has {raw.shape[0]} rows but {ids_path.name} lists {len(rows)} entities (one per row)"
        )
    mask = np.ones(raw.shape[0], dtype=bool)
    if mask_path is not None:
        try:
            mask = np.load(mask_path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(mask_path, f"not a readable .npy array: {exc}") from exc
        if mask.shape != (raw.shape[0],) or mask.dtype != np.bool_:
            raise DataError(mask_path, f"expected a bool vector of length {raw.shape[0]}, found {mask.dtype} {mask.shape}")
    values = raw.astype(np.float32)
    check_finite(matrix_path, values, [key for _, key in rows], mask=mask)
    matrix = np.zeros((len(ent_index), raw.shape[1]), dtype=np.float32)
    present = np.zeros(len(ent_index), dtype=bool)
    seen: dict[str, int] = {}
    for row, (lineno, key) in enumerate(rows):
        if key not in ent_index:
            raise DataError(ids_path, f"unknown entity {key!r}", lineno)
        if key in seen:
            raise DataError(ids_path, f"duplicate entity {key!r} (first on line {seen[key]})", lineno)
        seen[key] = lineno
        if mask[row]:
            matrix[ent_index[key]] = values[row]
            present[ent_index[key]] = True
    return ModalityFeatures(name=name, matrix=matrix, present=present)


def project_data_dir() -> Path:
    """Where the bundled datasets live: $IMF_DATA_DIR, else `data/` beside the packages."""
    env = os.environ.get("IMF_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


def in_source_checkout() -> bool:
    """True when the packages run from a clone of the repository (pyproject.toml beside them,
    as in an editable install), False when installed into site-packages, where `data/` and the
    converters' raw sources are not at hand."""
    return (Path(__file__).resolve().parents[2] / "pyproject.toml").is_file()


def missing_builtin_hint(name: str) -> str:
    """What to do about a built-in dataset absent from `project_data_dir()`: point IMF_DATA_DIR
    at a folder holding it (installed package, or IMF_DATA_DIR already set), and, in a clone,
    rebuild it from its raw release."""
    env = os.environ.get("IMF_DATA_DIR")
    build = f"run `imf data build {name}`"
    if env:
        where = f"IMF_DATA_DIR={env} holds no {name}/: point IMF_DATA_DIR at a folder that holds {name}/"
        return f"{where}, or unset it to use the clone's data/ folder" if in_source_checkout() else where
    if in_source_checkout():
        return build
    return f"the installed package carries no datasets: set IMF_DATA_DIR to a folder that holds {name}/ (the data/ folder of a clone of the repository)"


def resolve_dataset(name_or_dir: str | Path) -> Path:
    """A dataset directory from a built-in name or a path; UnknownNameError otherwise."""
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    key = str(name_or_dir).lower()
    if key in BUILTIN_DATASETS:
        built = project_data_dir() / key
        if not (built / "train.tsv").exists() and not (built / "train.tsv.gz").exists():
            raise DataError(built, f"built-in dataset {key!r} is missing; {missing_builtin_hint(key)}")
        return built
    raise UnknownNameError("dataset (neither a built-in name nor a directory)", str(name_or_dir), BUILTIN_DATASETS, list_known=True)


def load_dataset(name_or_dir: str | Path, *, with_features: bool = True) -> KGDataset:
    """Load and validate a dataset (built-in name or directory). See the module docstring."""
    root = resolve_dataset(name_or_dir)
    used: list[Path] = []
    meta: dict = {}
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(meta_path, f"invalid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise DataError(meta_path, "expected a JSON object")
    name = str(meta.get("name", root.name))

    ent_ids: list[str] = []
    ent_names: list[str] = []
    ent_descs: list[str] = []
    ent_file = find_file(root, "entities.tsv")
    if ent_file:
        ent_ids, ent_names, ent_descs = read_vocab(ent_file, "entity")
        used.append(ent_file)
    rel_ids: list[str] = []
    rel_names: list[str] = []
    rel_file = find_file(root, "relations.tsv")
    if rel_file:
        rel_ids, rel_names, _ = read_vocab(rel_file, "relation")
        used.append(rel_file)
    ent_index = {k: i for i, k in enumerate(ent_ids)}
    rel_index = {k: i for i, k in enumerate(rel_ids)}

    split_paths: dict[str, Path] = {}
    for split in SPLITS:
        p = find_file(root, f"{split}.tsv")
        if p is None:
            raise DataError(root / f"{split}.tsv", "missing split file (also looked for .tsv.gz)")
        split_paths[split] = p
        used.append(p)

    # Each vocabulary is fixed by its file when there is one, else grown from train.
    vocab_files = {"entity": ent_file, "relation": rel_file}
    train = _read_triples(split_paths["train"], ent_index, rel_index, vocab_files=vocab_files, seen_in_train=None)
    seen = (set(train[:, 0].tolist()) | set(train[:, 2].tolist()), set(train[:, 1].tolist()))
    valid = _read_triples(split_paths["valid"], ent_index, rel_index, vocab_files=vocab_files, seen_in_train=seen)
    test = _read_triples(split_paths["test"], ent_index, rel_index, vocab_files=vocab_files, seen_in_train=seen)

    # Vocabularies grown from train (no entities.tsv / relations.tsv) get their ids as names.
    ent_ids = sorted(ent_index, key=ent_index.__getitem__)
    rel_ids = sorted(rel_index, key=rel_index.__getitem__)
    if not ent_names:
        ent_names, ent_descs = list(ent_ids), [""] * len(ent_ids)
    if len(rel_names) != len(rel_ids):
        rel_names = rel_names + rel_ids[len(rel_names):]

    features: dict[str, ModalityFeatures] = {}
    feat_dir = root / "features"
    if with_features and feat_dir.is_dir():
        for matrix_path in sorted(feat_dir.glob("*.npy")):
            if matrix_path.name.endswith(".mask.npy"):
                continue
            mod = matrix_path.stem
            check_modality_name(matrix_path, mod)
            ids_path = feat_dir / f"{mod}.ids.txt"
            if not ids_path.is_file():
                raise DataError(ids_path, f"missing: modality {mod!r} needs the entity id of each row")
            mask_path = feat_dir / f"{mod}.mask.npy"
            features[mod] = load_feature_file(matrix_path, ids_path, mask_path if mask_path.is_file() else None, ent_index, mod)
            used += [matrix_path, ids_path] + ([mask_path] if mask_path.is_file() else [])
    default_modalities = meta.get("default_modalities")
    if default_modalities is not None:
        if not isinstance(default_modalities, list) or not all(isinstance(m, str) for m in default_modalities):
            raise DataError(meta_path, "field 'default_modalities' must be a list of modality names")
        if with_features:
            for m in default_modalities:
                if m not in features:
                    raise DataError(meta_path, f"field 'default_modalities' names {m!r}, which has no features/{m}.npy")

    ds = KGDataset(
        name=name,
        root=root,
        entity_ids=ent_ids,
        entity_names=ent_names,
        entity_descriptions=ent_descs,
        relation_ids=rel_ids,
        relation_names=rel_names,
        train=train,
        valid=valid,
        test=test,
        features=features,
        default_modalities=default_modalities,
        fingerprint=sha256_files(sorted(used), root),
    )
    log.info(
        "loaded %s: %d entities, %d relations, %d/%d/%d triples, modalities %s",
        name, ds.num_entities, ds.num_relations, len(train), len(valid), len(test),
        {k: f"{v.coverage}/{ds.num_entities}x{v.dim}" for k, v in features.items()},
    )
    return ds
