"""Features on the way to training: build the ones a dataset's own files call for and that are
missing, so that `imf data import` then `imf train` needs no `imf features` step in between.

- numeric, from ``attributes.tsv`` (model.features.numeric; always possible);
- text, from the names and descriptions of ``entities.tsv`` (model.features.text), when some
  entity has a description or a name other than its id; needs the `encoder` extra.

Visual features need images, which no dataset file points to: they are never built here. The
built-in datasets ship their features, so nothing is built for them.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

from model.features import numeric as numeric_features
from model.features import text as text_features
from model.features.text import MissingExtraError
from model.kg.checks import entity_text_counts
from model.kg.dataset import BUILTIN_DATASETS, project_data_dir, resolve_dataset

log = logging.getLogger(__name__)

BUILDABLE = ("numeric", "text")


def is_builtin(root: Path) -> bool:
    """True for data/<name> of a built-in dataset (its features are committed, never rebuilt here)."""
    root = Path(root).resolve()
    return root.name in BUILTIN_DATASETS and root.parent == project_data_dir().resolve()


def called_for(root: Path) -> list[str]:
    """The modalities `root`'s files can build (whether built already or not), in BUILDABLE order."""
    wanted = []
    if numeric_features.attributes_file(root) is not None:
        wanted.append("numeric")
    if any(entity_text_counts(root)):
        wanted.append("text")
    return wanted


def missing_features(root: Path, modalities: list[str] | None = None) -> list[str]:
    """The modalities `ensure_features` would build: called for, not in features/, and among
    `modalities` when given (None: the dataset's own choice, every one called for)."""
    root = Path(root)
    if is_builtin(root):
        return []
    return [
        m for m in called_for(root)
        if (modalities is None or m in modalities) and not (root / "features" / f"{m}.npy").is_file()
    ]


def ensure_features(root: Path | str, modalities: list[str] | None = None) -> list[str]:
    """Build the features that `root`'s files call for and that are missing (see the module
    docstring); returns the modalities built, each logged with its time.

    root: a dataset directory (or a built-in name). modalities: the ones training will use
    (``--modalities``); None: every one the files call for. A no-op for the built-in datasets. Raises MissingExtraError, before building anything,
    when text features are needed and the text encoder is not installed: one line naming the
    `pip install` and how to train without text.
    """
    root = resolve_dataset(root)
    todo = missing_features(root, modalities)
    if not todo:
        return []
    if "text" in todo:
        # Load the encoder first: a missing extra stops here, with nothing half built.
        try:
            text_features._text_model()
        except MissingExtraError as exc:
            instead = "numeric" if "numeric" in called_for(root) or (root / "features" / "numeric.npy").is_file() else "none"
            raise text_features.text_encoder_missing(
                f"train without text: imf train --dataset {shlex.quote(str(root))} ... --modalities {instead}", module=exc.module
            ) from None
    built = []
    for modality in todo:
        start = time.perf_counter()
        if modality == "numeric":
            attributes = numeric_features.attributes_file(root)
            assert attributes is not None  # called_for found it
            numeric_features.build_numeric_features(root, attributes)
        else:
            text_features.build_text_features(root)
        log.info("built %s features for %s in %.1f s", modality, root, time.perf_counter() - start)
        built.append(modality)
    return built
