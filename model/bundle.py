"""The checkpoint bundle: everything needed to serve a trained model, and nothing that unpickles.

    artifacts/RUN/
      manifest.json               format version, model + training config, modalities, dataset
                                  fingerprint, metrics, model fingerprint, sha256 of every file
      weights.safetensors         the model's state dict (feature matrices as float16 buffers)
      entities.tsv                id <TAB> name <TAB> description, in model order
      relations.tsv               id <TAB> name, in model order (reciprocals are id + R)
      known_triples.safetensors   train / valid / test triples (n, 3) int64, for filtering
      index/                      optional prebuilt FAISS index, tied to the model fingerprint

`save_bundle` writes into a temporary sibling directory and renames it into place when every
file is complete, so an interrupted run never leaves a half bundle. `load_bundle` checks the
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
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model import __version__
from model.data import KGDataset
from model.textio import decode_field, encode_record, records
from model.errors import BundleError, UnknownNameError
from model.calibration import Calibration
from model.imf import IMF, IMFConfig
from model.inductive import FeatureMap
from model.names import NameIndex
from model.triples import AnswerIndex

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
# (model.calibration) and the feature map that embeds new entities (model.inductive).
CALIBRATION = "calibration.json"
FEATURE_MAP = "inductive.safetensors"
EXTRA_FILES = (CALIBRATION, FEATURE_MAP)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Vocabularies are written with model.textio's escapes (any name round-trips); bundles written
# before it replaced tabs and newlines by spaces and carry no "vocab_encoding".
VOCAB_ENCODING = "tsv-escaped-v1"


def _share(folder: Path) -> None:
    """Give the bundle the permissions of a normally created folder (mkdtemp makes it 0700):
    readable by the service's user in a container, say. Honours the umask."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


SCALE_SUFFIX = ".__row_scale__"  # companion tensor of an int8-quantised table


def _smallest_int(arr: np.ndarray) -> np.ndarray:
    """The triples as int16 or int32 when their ids fit (a quarter or half of int64's size)."""
    top = int(arr.max()) if arr.size else 0
    for dtype in (np.int16, np.int32):
        if top <= np.iinfo(dtype).max:
            return np.ascontiguousarray(arr, dtype=dtype)
    return np.ascontiguousarray(arr, dtype=np.int64)


def encode_state(state: dict[str, torch.Tensor], num_entities: int) -> tuple[dict[str, torch.Tensor], dict]:
    """A compact encoding of a state dict: every entity table (a float tensor of shape (N, d),
    N = num_entities) and every decoder core tensor W_b (d_r, d, d) as int8 with one float16
    scale per row of the last dimension (symmetric, round to nearest), every other float tensor
    as float16, integer and bool tensors unchanged.

    Returns (tensors, encoding); `decode_state(tensors, encoding)` inverts it up to rounding.
    The int8 tables and cores are nearly all of a bundle's size: 4x smaller than float32.
    """
    out: dict[str, torch.Tensor] = {}
    quantized = []
    for key, v in state.items():
        v = v.detach().cpu()
        table = v.dim() == 2 and v.shape[0] == num_entities
        core = v.dim() == 3 and key.endswith(".core")
        if v.is_floating_point() and (table or core):
            scale = (v.abs().amax(dim=-1, keepdim=True).float() / 127.0).clamp(min=1e-12)
            out[key] = torch.round(v.float() / scale).clamp(-127, 127).to(torch.int8).contiguous()
            out[key + SCALE_SUFFIX] = scale.to(torch.float16).contiguous()
            quantized.append(key)
        elif v.is_floating_point():
            out[key] = v.to(torch.float16).contiguous()
        else:
            out[key] = v.contiguous()
    return out, {"float": "float16", "int8_rows": quantized}


def decode_state(tensors: dict[str, torch.Tensor], encoding: dict | None) -> dict[str, torch.Tensor]:
    """The state dict of `encode_state`'s output, float tensors as float32. encoding None: as stored."""
    if not encoding:
        return tensors
    quantized = set(encoding.get("int8_rows", []))
    state = {}
    for key, v in tensors.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        if key in quantized:
            scale = tensors.get(key + SCALE_SUFFIX)
            if scale is None:
                raise BundleError(f"{WEIGHTS}: quantised tensor {key!r} has no scale")
            state[key] = v.float() * scale.float()
        elif v.is_floating_point():
            state[key] = v.float()
        else:
            state[key] = v
    return state


def as_served(model: IMF) -> IMF:
    """The compacted model with exactly the weights a compact bundle will hold (int8 tables and
    float16 round trip), in eval mode: what its metrics must be measured on."""
    compact = model.compacted()
    state, encoding = encode_state(compact.state_dict(), compact.cfg.num_entities)
    compact.load_state_dict(decode_state(state, encoding))
    return compact.eval()


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
    dataset: KGDataset | Bundle,
    *,
    training: dict,
    metrics: dict,
    overwrite: bool = False,
    compact: bool = False,
    extra_files: dict[str, bytes] | None = None,
    extras: dict | None = None,
) -> Path:
    """Write a bundle for `model` trained on `dataset` to `out`, atomically.

    extra_files: contents of optional files (EXTRA_FILES) to include, e.g. carried over from
    the bundle being compacted; extras: their summary for the manifest.

    compact: store what serving needs in a fraction of the space (`IMF.compacted` tables instead
    of raw features, `encode_state`'s int8 / float16 encoding); the metrics passed should then
    be those of the compacted model (see `compact_bundle`).
    """
    out = Path(out)
    check_writable(out, overwrite=overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    encoding = None
    try:
        if compact:
            model = model.compacted()
            state, encoding = encode_state(model.state_dict(), model.cfg.num_entities)
        else:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        save_file(
            {s: torch.from_numpy(_smallest_int(dataset.split(s))) for s in ("train", "valid", "test")},
            str(tmp / KNOWN),
        )
        (tmp / ENTITIES).write_text(
            "".join(encode_record([i, n, d]) for i, n, d in zip(dataset.entity_ids, dataset.entity_names, dataset.entity_descriptions, strict=True)),
            encoding="utf-8",
        )
        (tmp / RELATIONS).write_text(
            "".join(encode_record([i, n]) for i, n in zip(dataset.relation_ids, dataset.relation_names, strict=True)),
            encoding="utf-8",
        )
        for name, data in (extra_files or {}).items():
            if name not in EXTRA_FILES:
                raise BundleError(f"{name}: not a bundle extra (expected one of {EXTRA_FILES})")
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
                "name": dataset.name,
                "fingerprint": dataset.dataset_fingerprint if isinstance(dataset, Bundle) else dataset.fingerprint,
                "entities": dataset.num_entities,
                "relations": dataset.num_relations,
                "triples": {s: int(len(dataset.split(s))) for s in ("train", "valid", "test")},
            },
            "metrics": metrics,
            **({"extras": extras} if extras else {}),
            "model_fingerprint": files[WEIGHTS],
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float), encoding="utf-8")
        _share(tmp)
        if out.exists():
            # Replace an existing bundle: move it aside first so a failure leaves one intact copy.
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (model %s)", out, manifest["model_fingerprint"][:12])
    return out


@dataclass
class Bundle:
    """A loaded, verified bundle. `model` is in eval mode on the CPU."""

    path: Path
    manifest: dict
    model: IMF
    entity_ids: list[str]
    entity_names: list[str]
    entity_descriptions: list[str]
    relation_ids: list[str]
    relation_names: list[str]
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
    def num_relations(self) -> int:
        return len(self.relation_ids)

    # The dataset interface `save_bundle` reads, so that a bundle can be re-saved (compacted).
    @property
    def num_entities(self) -> int:
        return len(self.entity_ids)

    @property
    def name(self) -> str:
        return str(self.manifest.get("dataset", {}).get("name", ""))

    @property
    def dataset_fingerprint(self) -> str:
        return str(self.manifest.get("dataset", {}).get("fingerprint", ""))

    def split(self, name: str) -> np.ndarray:
        return self.triples[name]

    @cached_property
    def known(self) -> AnswerIndex:
        """Every known triple (train + valid + test) as an answer index, for filtering."""
        allt = np.concatenate([self.triples[s] for s in ("train", "valid", "test")])
        return AnswerIndex(allt, len(self.entity_ids), self.num_relations)

    @cached_property
    def _entity_index(self) -> dict[str, int]:
        return {e: i for i, e in enumerate(self.entity_ids)}

    @cached_property
    def _relation_index(self) -> dict[str, int]:
        return {r: i for i, r in enumerate(self.relation_ids)}

    @cached_property
    def _entity_by_name(self) -> dict[str, int]:
        """Lower-cased name -> entity; a name shared by several entities goes to the one with
        the most training triples (deterministic, and the one a user most likely means)."""
        out: dict[str, int] = {}
        for i in np.argsort(-self._degree, kind="stable"):
            out.setdefault(self.entity_names[i].lower(), int(i))
        return out

    @cached_property
    def _relation_by_name(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, n in enumerate(self.relation_names):
            out.setdefault(n.lower(), i)
        return out

    def entity(self, key: str) -> int:
        """Entity index from an id or an exact (case-insensitive) name; UnknownNameError else."""
        if key in self._entity_index:
            return self._entity_index[key]
        hit = self._entity_by_name.get(key.strip().lower())
        if hit is not None:
            return hit
        sugg = [self.entity_names[i] for i in self.name_index.close(key)]
        raise UnknownNameError("entity", key, [], suggestions=sugg)

    def relation(self, key: str) -> int:
        """Relation index (base, without reciprocal) from an id or exact name."""
        if key in self._relation_index:
            return self._relation_index[key]
        hit = self._relation_by_name.get(key.strip().lower())
        if hit is not None:
            return hit
        raise UnknownNameError("relation", key, self.relation_ids + self.relation_names)

    @cached_property
    def name_index(self) -> NameIndex:
        """Trigram index of the entity names and ids, weighted by training degree (model.names):
        suggestions and search at a bounded cost per query, built once."""
        return NameIndex(self.entity_names, self.entity_ids, self._degree)

    def search_entities(self, query: str, limit: int = 10) -> list[int]:
        """Entities whose name or id contains `query` (case-insensitive): exact matches first,
        then prefix matches, then substring matches, each by number of training triples."""
        return self.name_index.search(query, limit)

    @cached_property
    def _degree(self) -> np.ndarray:
        return np.bincount(self.triples["train"][:, [0, 2]].ravel(), minlength=len(self.entity_ids))


def _read_tsv(path: Path, min_cols: int, *, escaped: bool) -> list[list[str]]:
    """Records of a bundle vocabulary; fields decoded when the bundle wrote them escaped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    rows = []
    for lineno, line in records(text):
        cols = line.split("\t")
        if len(cols) < min_cols:
            raise BundleError(f"{path}:{lineno}: expected at least {min_cols} tab-separated columns")
        rows.append([decode_field(c) for c in cols] if escaped else cols)
    return rows


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


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Load and verify a bundle; the model comes back in eval mode on the CPU."""
    path = Path(path)
    manifest = read_manifest(path)
    if verify:
        verify_files(path, manifest)
    try:
        # Bundles written before cross-entropy training have no "output": they were BCE models.
        cfg = IMFConfig(**{"output": "sigmoid", **manifest["model_config"]})
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{path / MANIFEST}: invalid model_config: {exc}") from exc
    try:
        state = load_file(str(path / WEIGHTS))
        known = load_file(str(path / KNOWN))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path}: cannot read safetensors file: {exc}") from exc
    model = IMF(cfg)
    try:
        model.load_state_dict(decode_state(state, manifest.get("weights_encoding")), strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path / WEIGHTS}: does not match model_config: {str(exc).splitlines()[0]}") from exc
    model.eval()
    escaped = manifest.get("vocab_encoding") == VOCAB_ENCODING
    ents = _read_tsv(path / ENTITIES, 2, escaped=escaped)
    rels = _read_tsv(path / RELATIONS, 2, escaped=escaped)
    if len(ents) != cfg.num_entities or len(rels) != cfg.num_relations:
        raise BundleError(f"{path}: vocabulary sizes ({len(ents)} entities, {len(rels)} relations) do not match model_config")
    triples = {}
    for split in ("train", "valid", "test"):
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
            from safetensors import safe_open

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
        entity_ids=[r[0] for r in ents],
        entity_names=[r[1] for r in ents],
        entity_descriptions=[r[2] if len(r) > 2 else "" for r in ents],
        relation_ids=[r[0] for r in rels],
        relation_names=[r[1] for r in rels],
        triples=triples,
        calibration=calibration,
        feature_map=feature_map,
    )


def add_extras(path: str | Path, *, calibration: Calibration | None = None, feature_map: FeatureMap | None = None, summary: dict | None = None) -> Path:
    """Add (or replace) a bundle's optional files, atomically: the bundle (its FAISS index
    included: extras do not change the weights it is tied to) is copied to a
    temporary sibling, the files written and the manifest's checksums updated there, and the
    copy renamed into place, so an interruption leaves the old bundle intact."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
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
        _share(tmp)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("added extras to %s: %s", path, [n for n, v in ((CALIBRATION, calibration), (FEATURE_MAP, feature_map)) if v is not None])
    return path


def compact_bundle(src: str | Path, out: str | Path, *, report_test: bool = False, overwrite: bool = False, progress: bool = False) -> Path:
    """Write a compact copy of the bundle at `src` to `out` (see `save_bundle(compact=True)`),
    with its validation metrics (and, with report_test, its test metrics) re-measured on the
    compacted weights; the source's own metrics are kept under `before_compaction`."""
    from model.evaluate import evaluate

    bundle = load_bundle(src)
    check_writable(Path(out), overwrite=overwrite)
    served = as_served(bundle.model)
    metrics = {"valid": evaluate(served, bundle.triples["valid"], bundle.known, split="valid", progress=progress)}
    if report_test:
        metrics["test"] = evaluate(served, bundle.triples["test"], bundle.known, split="test", progress=progress)
    metrics["before_compaction"] = {
        split: {k: m[k] for k in ("mrr", "hits@1", "hits@3", "hits@10")} for split, m in bundle.manifest.get("metrics", {}).items() if isinstance(m, dict) and "mrr" in m
    }
    return save_bundle(
        out, served, bundle, training=bundle.manifest.get("training", {}), metrics=metrics, overwrite=overwrite, compact=True,
        extra_files=bundle.extra_file_bytes(), extras=bundle.manifest.get("extras"),
    )
