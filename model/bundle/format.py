"""The checkpoint bundle: everything needed to serve a trained model, and nothing that unpickles.

    artifacts/RUN/
      manifest.json               format version, model + training config, modalities, dataset
                                  fingerprint, metrics, model fingerprint, sha256 of every file
      weights.safetensors         the model's state dict (feature matrices as float16 buffers)
      entities.tsv                id <TAB> name <TAB> description, in model order
      relations.tsv               id <TAB> name, in model order (reciprocals are id + R)
      known_triples.safetensors   train / valid / test triples (n, 3) int64, for filtering
      calibration.json            optional: the probability calibration (model.bundle.calibration)
      inductive.safetensors       optional: the feature map for new entities (model.bundle.feature_map)
      index/                      optional prebuilt FAISS index, tied to the model fingerprint

`save_bundle` writes into a temporary sibling directory and renames it into place when every
file is complete (model.files.atomic_folder), so an interrupted run never leaves a half bundle. `load_bundle` checks the
format version and the sha256 of every file against the manifest, and refuses anything corrupt,
truncated or mismatched with a `BundleError` that names the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from model import __version__
from model.bundle.calibration import Calibration
from model.bundle.feature_map import FeatureMap
from model.bundle.quantize import decode_state, encode_state
from model.errors import BundleError
from model.files import atomic_folder, decode_field, encode_record, gc_paused, records, sha256_file
from model.kg.dataset import SPLITS
from model.kg.triples import AnswerIndex
from model.kg.vocab import Vocabulary, training_degree
from model.network.imf import IMF, IMFConfig

log = logging.getLogger(__name__)

FORMAT = "imf-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
ENTITIES = "entities.tsv"
RELATIONS = "relations.tsv"
KNOWN = "known_triples.safetensors"
REQUIRED_FILES = (WEIGHTS, ENTITIES, RELATIONS, KNOWN)
# Optional extras fitted after training (`imf bundle extras`): the probability calibration
# (model.bundle.calibration) and the feature map that embeds new entities (model.bundle.feature_map).
CALIBRATION = "calibration.json"
FEATURE_MAP = "inductive.safetensors"
EXTRA_FILES = (CALIBRATION, FEATURE_MAP)


# Vocabularies are written with model.files's escapes (any name round-trips); bundles written
# before it replaced tabs and newlines by spaces and carry no "vocab_encoding".
VOCAB_ENCODING = "tsv-escaped-v1"


def _smallest_int(arr: np.ndarray) -> np.ndarray:
    """The triples as int16 or int32 when their ids fit (a quarter or half of int64's size)."""
    top = int(arr.max()) if arr.size else 0
    for dtype in (np.int16, np.int32):
        if top <= np.iinfo(dtype).max:
            return np.ascontiguousarray(arr, dtype=dtype)
    return np.ascontiguousarray(arr, dtype=np.int64)


def check_writable(out: Path, *, overwrite: bool) -> None:
    """Fail early when `out` exists (and overwrite is off) or its parent cannot be created."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"{out}: already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise BundleError(f"{out.parent}: not writable")


def save_bundle(
    out: Path,
    model: IMF,
    vocab: Vocabulary,
    triples: Mapping[str, np.ndarray],
    *,
    dataset: dict,
    training: dict,
    metrics: dict,
    overwrite: bool = False,
    compact: bool = False,
    extra_files: dict[str, bytes] | None = None,
    extras: dict | None = None,
) -> Path:
    """Write a bundle for `model` to `out`, atomically (model.files.atomic_folder).

    vocab: the entities and relations in model order; triples: the train / valid / test
    triples, (n, 3) each, for serve-time filtering; dataset: {"name", "fingerprint"} of the
    dataset it was trained on (a re-saved bundle passes its own).

    extra_files: contents of optional files (EXTRA_FILES) to include, e.g. carried over from
    the bundle being compacted; extras: their summary for the manifest.

    compact: store what serving needs in a fraction of the space (`IMF.compacted` tables instead
    of raw features, model.bundle.quantize's int8 / float16 encoding); the metrics passed should
    then be those of the compacted model (see model.pipeline.compact_bundle).
    """
    out = Path(out)
    check_writable(out, overwrite=overwrite)
    for name in extra_files or {}:
        if name not in EXTRA_FILES:
            raise BundleError(f"{name}: not a bundle extra (expected one of {EXTRA_FILES})")
    encoding = None
    with atomic_folder(out) as tmp:
        if compact:
            model = model.compacted()
            state, encoding = encode_state(model.state_dict(), model.cfg.num_entities)
        else:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        save_file({s: torch.from_numpy(_smallest_int(triples[s])) for s in SPLITS}, str(tmp / KNOWN))
        (tmp / ENTITIES).write_text(
            "".join(encode_record([i, n, d]) for i, n, d in zip(vocab.entity_ids, vocab.entity_names, vocab.entity_descriptions, strict=True)),
            encoding="utf-8",
        )
        (tmp / RELATIONS).write_text(
            "".join(encode_record([i, n]) for i, n in zip(vocab.relation_ids, vocab.relation_names, strict=True)),
            encoding="utf-8",
        )
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        files = {name: sha256_file(tmp / name) for name in (*REQUIRED_FILES, *(extra_files or {}))}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "library_version": __version__,
            "model_config": model.cfg.to_dict(),
            "weights_encoding": encoding,
            "vocab_encoding": VOCAB_ENCODING,
            "branches": model.branches,
            "modalities": {
                m: {"dim": model.cfg.modalities[m], "coverage": int(model.present(m).sum())} for m in model.modalities
            },
            "training": training,
            "dataset": {
                "name": dataset["name"],
                "fingerprint": dataset["fingerprint"],
                "entities": vocab.num_entities,
                "relations": vocab.num_relations,
                "triples": {s: int(len(triples[s])) for s in SPLITS},
            },
            "metrics": metrics,
            **({"extras": extras} if extras else {}),
            "model_fingerprint": files[WEIGHTS],
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float), encoding="utf-8")
    log.info("wrote bundle %s (model %s)", out, manifest["model_fingerprint"][:12])
    return out


@dataclass
class Bundle:
    """A loaded, verified bundle. `model` is in eval mode on the CPU; `triples` holds the
    train / valid / test triples, (n, 3) int64 each."""

    path: Path
    manifest: dict
    model: IMF
    vocab: Vocabulary
    triples: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    calibration: Calibration | None = None  # CALIBRATION, when the bundle has one
    feature_map: FeatureMap | None = None  # FEATURE_MAP, when the bundle has one

    @property
    def extras_fingerprint(self) -> str:
        """Digest of the optional files (they change answers: probabilities, new entities)."""
        files = self.manifest.get("files", {})
        return hashlib.sha256("".join(f"{n}:{files.get(n, '')};" for n in EXTRA_FILES).encode()).hexdigest()

    def extra_file_bytes(self) -> dict[str, bytes]:
        """The optional files' contents, to carry them into a re-saved (compacted) bundle."""
        return {n: (self.path / n).read_bytes() for n in EXTRA_FILES if n in self.manifest.get("files", {})}

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["model_fingerprint"])

    @property
    def num_entities(self) -> int:
        return self.vocab.num_entities

    @property
    def num_relations(self) -> int:
        return self.vocab.num_relations

    @property
    def dataset(self) -> dict:
        """{"name", "fingerprint", ...} of the dataset the model was trained on."""
        return dict(self.manifest.get("dataset", {}))

    @cached_property
    def known(self) -> AnswerIndex:
        """Every known triple (train + valid + test) as an answer index, for filtering."""
        allt = np.concatenate([self.triples[s] for s in SPLITS])
        return AnswerIndex(allt, self.num_entities, self.num_relations)


def _read_tsv(path: Path, min_cols: int, width: int, *, escaped: bool) -> list[list[str]]:
    """The first `width` columns of a bundle vocabulary, as `width` lists of fields (a column a
    line lacks is ""; fewer than `min_cols` is an error naming the line), decoded when the
    bundle wrote them escaped. Columns, not rows: a million one-line lists would stay behind as
    100 MB of fragmented heap."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    with gc_paused():  # a million records: see gc_paused
        if "\\" not in text and "\r" not in text:
            fast = _uniform_columns(text, min_cols, width)
            if fast is not None:
                return fast
        columns: list[list[str]] = [[] for _ in range(width)]
        for lineno, line in records(text):
            cols = line.split("\t")
            if len(cols) < min_cols:
                raise BundleError(f"{path}:{lineno}: expected at least {min_cols} tab-separated columns")
            for j, column in enumerate(columns):
                field = cols[j] if j < len(cols) else ""
                column.append(decode_field(field) if escaped and "\\" in field else field)  # only an escaped field needs decoding
        return columns


def _uniform_columns(text: str, min_cols: int, width: int) -> list[list[str]] | None:
    """The columns of `text` when nothing in it needs decoding and every line has the same
    number c >= min_cols of fields (the usual file): one split of the whole text, sliced into
    columns. None otherwise (the caller's line-by-line loop then names the odd line)."""
    body = text[:-1] if text.endswith("\n") else text
    if not body:
        return [[] for _ in range(width)]
    raw = np.frombuffer(body.encode("utf-8"), dtype=np.uint8)
    newlines, tabs = np.flatnonzero(raw == 10), np.flatnonzero(raw == 9)
    per_line = np.diff(np.searchsorted(tabs, newlines), prepend=0, append=len(tabs))  # tabs on each line
    c = int(per_line[0]) + 1
    if c < min_cols or not bool((per_line == c - 1).all()):
        return None
    fields = body.replace("\n", "\t").split("\t")
    return [fields[j::c] if j < c else [""] * (len(fields) // c) for j in range(width)]


def _member(path: Path, name: object) -> Path:
    """The bundle file `name` as listed in a manifest: a plain relative path inside the bundle,
    never absolute, never through `..` or a link out of the bundle."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise BundleError(f"{path / MANIFEST}: invalid file name {name!r}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or name.startswith(("/", "\\")) or "\\" in name:
        raise BundleError(f"{path / MANIFEST}: file name {name!r} points outside the bundle")
    target = path / rel
    root = path.resolve()
    if not target.resolve().is_relative_to(root):
        raise BundleError(f"{path / MANIFEST}: file {name!r} resolves outside the bundle ({target.resolve()})")
    return target


def read_manifest(path: Path) -> dict:
    """The manifest of the bundle at `path`, with format checks; BundleError otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle directory")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath}: missing; not a bundle (or an interrupted write)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: corrupt JSON: {exc}") from exc
    except OSError as exc:
        raise BundleError(f"{mpath}: cannot read ({exc.strerror}); check the permissions") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not an {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{mpath}: format_version {version!r} is not supported (this library reads {FORMAT_VERSION})")
    for key in ("model_config", "files", "model_fingerprint"):
        if key not in manifest:
            raise BundleError(f"{mpath}: field {key!r} missing")
    return manifest


def verify_files(path: Path, manifest: dict) -> None:
    """Check every file listed in the manifest against its sha256 (catches truncation too)."""
    files = manifest["files"]
    if not isinstance(files, dict):
        raise BundleError(f"{path / MANIFEST}: field 'files' must map file names to sha256 digests")
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"{path / MANIFEST}: no checksum for {name}")
    for name, digest in files.items():
        fpath = _member(path, name)
        if not fpath.is_file():
            raise BundleError(f"{fpath}: missing")
        try:
            actual = sha256_file(fpath)
        except OSError as exc:
            raise BundleError(f"{fpath}: cannot read ({exc.strerror}); check the permissions") from exc
        if actual != digest:
            raise BundleError(f"{fpath}: checksum mismatch (corrupt, truncated or replaced)")
    if files[WEIGHTS] != manifest["model_fingerprint"]:
        raise BundleError(f"{path / MANIFEST}: model_fingerprint does not match {WEIGHTS}")


def manifest_config(path: Path, manifest: dict) -> IMFConfig:
    """The model configuration a bundle's manifest records (BundleError when invalid)."""
    try:
        # Bundles written before cross-entropy training have no "output": they were BCE models.
        return IMFConfig(**{"output": "sigmoid", **manifest["model_config"]})
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{path / MANIFEST}: invalid model_config: {exc}") from exc


def load_bundle(path: str | Path, *, verify: bool = True, entity_rows: bool = True) -> Bundle:
    """Load and verify a bundle; the model comes back in eval mode on the CPU.

    entity_rows False: the model's per-entity tensors (IMF.ENTITY_ROW_PREFIXES: 1.5 GB at a
    million entities) are left unread, as after `IMF.release_entity_rows`, for a server that
    has the entity tables from elsewhere (service.tables); the file is verified whole all the
    same."""
    path = Path(path)
    manifest = read_manifest(path)
    if verify:
        verify_files(path, manifest)
    cfg = manifest_config(path, manifest)
    try:
        state = load_file(str(path / WEIGHTS))
        known = load_file(str(path / KNOWN))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path}: cannot read safetensors file: {exc}") from exc
    with torch.device("meta"):  # no memory, no random init: every tensor comes from the file
        model = IMF(cfg)
    try:
        if not entity_rows:  # never read: their pages of the mapped file stay on disk
            state = {k: v for k, v in state.items() if not k.startswith(IMF.ENTITY_ROW_PREFIXES)}
        decoded = decode_state(state, manifest.get("weights_encoding"), source=WEIGHTS)
        # Copies the model owns: safetensors maps the file, and a tensor left on the mapping
        # would read its pages after the checksum above, and pin the whole file.
        result = model.load_state_dict({k: v.clone() for k, v in decoded.items()}, strict=entity_rows, assign=True)
        if not entity_rows:
            wrong = [k for k in result.missing_keys if not k.startswith(IMF.ENTITY_ROW_PREFIXES)] + list(result.unexpected_keys)
            if wrong:
                raise RuntimeError(f"missing or unexpected tensors: {', '.join(wrong[:5])}")
            model.release_entity_rows()
    except RuntimeError as exc:
        raise BundleError(f"{path / WEIGHTS}: does not match model_config: {str(exc).splitlines()[0]}") from exc
    model.eval()
    escaped = manifest.get("vocab_encoding") == VOCAB_ENCODING
    ents = _read_tsv(path / ENTITIES, 2, 3, escaped=escaped)  # id, name, description
    rels = _read_tsv(path / RELATIONS, 2, 2, escaped=escaped)  # id, name
    if len(ents[0]) != cfg.num_entities or len(rels[0]) != cfg.num_relations:
        raise BundleError(f"{path}: vocabulary sizes ({len(ents[0])} entities, {len(rels[0])} relations) do not match model_config")
    triples = {}
    for split in SPLITS:
        if split not in known:
            raise BundleError(f"{path / KNOWN}: split {split!r} missing")
        arr = known[split].numpy().astype(np.int64)  # stored in the smallest integer type that fits
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise BundleError(f"{path / KNOWN}: split {split!r} has shape {arr.shape}, expected (n, 3)")
        if len(arr) and (arr[:, [0, 2]].min() < 0 or arr[:, [0, 2]].max() >= cfg.num_entities or arr[:, 1].min() < 0 or arr[:, 1].max() >= cfg.num_relations):
            raise BundleError(f"{path / KNOWN}: split {split!r} has ids out of range")
        triples[split] = arr
    calibration = feature_map = None
    listed = manifest["files"]
    if CALIBRATION in listed:
        try:
            calibration = Calibration.from_json((path / CALIBRATION).read_text(encoding="utf-8"))
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path / CALIBRATION}: invalid calibration: {exc}") from exc
        if len(calibration.families) != 2 * cfg.num_relations:
            raise BundleError(f"{path / CALIBRATION}: {len(calibration.families)} relation families, expected {2 * cfg.num_relations}")
    if FEATURE_MAP in listed:
        try:
            with safe_open(str(path / FEATURE_MAP), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            feature_map = FeatureMap.from_tensors(tensors, meta)
        except (SafetensorError, ValueError, OSError) as exc:
            raise BundleError(f"{path / FEATURE_MAP}: invalid feature map: {exc}") from exc
        expected = sum(f + 1 for f in cfg.modalities.values()) + 1
        if feature_map.weights.shape != (expected, cfg.dim * (1 + len(cfg.modalities))):
            raise BundleError(f"{path / FEATURE_MAP}: weights of shape {feature_map.weights.shape} do not fit model_config")
    return Bundle(
        path=path,
        manifest=manifest,
        model=model,
        vocab=Vocabulary(
            entity_ids=ents[0],
            entity_names=ents[1],
            entity_descriptions=ents[2],
            relation_ids=rels[0],
            relation_names=rels[1],
            entity_weights=training_degree(triples["train"], cfg.num_entities),
        ),
        triples=triples,
        calibration=calibration,
        feature_map=feature_map,
    )


def add_extras(path: str | Path, *, calibration: Calibration | None = None, feature_map: FeatureMap | None = None, summary: dict | None = None) -> Path:
    """Add (or replace) a bundle's optional files, atomically: the bundle (its FAISS index
    included: extras do not change the weights it is tied to) is copied to a temporary sibling,
    the files written and the manifest's checksums updated there, and the copy swapped in
    (model.files.atomic_folder), so an interruption leaves the old bundle intact."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    with atomic_folder(path) as tmp:
        shutil.copytree(path, tmp, symlinks=True, dirs_exist_ok=True)  # the FAISS index too
        if calibration is not None:
            (tmp / CALIBRATION).write_text(calibration.to_json(), encoding="utf-8")
            manifest["files"][CALIBRATION] = sha256_file(tmp / CALIBRATION)
        if feature_map is not None:
            tensors, meta = feature_map.to_tensors()
            save_file(tensors, str(tmp / FEATURE_MAP), metadata=meta)
            manifest["files"][FEATURE_MAP] = sha256_file(tmp / FEATURE_MAP)
        manifest["extras"] = {**manifest.get("extras", {}), **(summary or {})}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float), encoding="utf-8")
    log.info("added extras to %s: %s", path, [n for n, v in ((CALIBRATION, calibration), (FEATURE_MAP, feature_map)) if v is not None])
    return path
