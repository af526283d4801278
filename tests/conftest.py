"""Shared fixtures: tiny hand-made datasets and a small slice of the real FB15k-237."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.kg.dataset import KGDataset, load_dataset

REPO = Path(__file__).resolve().parent.parent


def write_dataset(
    root: Path,
    train: list[tuple[str, str, str]],
    valid: list[tuple[str, str, str]],
    test: list[tuple[str, str, str]],
    *,
    entities: list[tuple[str, str, str]] | None = None,
    features: dict[str, tuple[np.ndarray, list[str]]] | None = None,
) -> Path:
    """A dataset directory in the project format (see model/kg/dataset.py)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        (root / f"{name}.tsv").write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    if entities is not None:
        (root / "entities.tsv").write_text("".join("\t".join(r) + "\n" for r in entities), encoding="utf-8")
    if features:
        (root / "features").mkdir(exist_ok=True)
        for mod, (matrix, ids) in features.items():
            np.save(root / "features" / f"{mod}.npy", matrix)
            (root / "features" / f"{mod}.ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return root


def export_dataset(ds: KGDataset, root: Path, entities: np.ndarray) -> Path:
    """Write the sub-graph of `ds` induced by `entities` (indices) to `root`, with features."""
    keep = np.zeros(ds.num_entities, dtype=bool)
    keep[entities] = True

    def rows(split: np.ndarray) -> list[tuple[str, str, str]]:
        mask = keep[split[:, 0]] & keep[split[:, 2]]
        return [(ds.entity_ids[h], ds.relation_ids[r], ds.entity_ids[t]) for h, r, t in split[mask].tolist()]

    train = rows(ds.train)
    in_train = {h for h, _, _ in train} | {t for _, _, t in train}
    rels = {r for _, r, _ in train}
    valid = [x for x in rows(ds.valid) if x[0] in in_train and x[2] in in_train and x[1] in rels]
    test = [x for x in rows(ds.test) if x[0] in in_train and x[2] in in_train and x[1] in rels]
    order = [i for i in range(ds.num_entities) if keep[i] and ds.entity_ids[i] in in_train]
    feats = {}
    for mod, f in ds.features.items():
        ids = [i for i in order if f.present[i]]
        if not ids:
            continue
        feats[mod] = (f.matrix[ids].astype(np.float16), [ds.entity_ids[i] for i in ids])
    write_dataset(
        root, train, valid, test,
        entities=[(ds.entity_ids[i], ds.entity_names[i], ds.entity_descriptions[i]) for i in order],
        features=feats,
    )
    return root


@pytest.fixture(scope="session")
def fb15k_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 600 best-connected FB15k-237 entities and the real triples among them (committed data)."""
    ds = load_dataset("fb15k-237")
    degree = np.bincount(ds.train[:, [0, 2]].ravel(), minlength=ds.num_entities)
    top = np.argsort(-degree, kind="stable")[:600]
    return export_dataset(ds, tmp_path_factory.mktemp("fb15k_slice"), top)


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> Path:
    """A 6-entity graph with a text modality covering 4 entities."""
    train = [("a", "likes", "b"), ("b", "likes", "c"), ("c", "likes", "d"), ("d", "likes", "e"), ("e", "knows", "f"), ("a", "knows", "c")]
    valid = [("a", "likes", "c")]
    test = [("b", "knows", "d")]
    feats = {"text": (np.random.default_rng(0).normal(size=(4, 5)).astype(np.float16), ["a", "b", "c", "f"])}
    ents = [(e, f"Entity {e.upper()}", f"the letter {e}") for e in "abcdef"]
    return write_dataset(tmp_path / "tiny", train, valid, test, entities=ents, features=feats)


@pytest.fixture(scope="session")
def slice_bundle(fb15k_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small IMF trained on the FB15k-237 slice (text + numeric), saved as a bundle."""
    from model.bundle.format import save_bundle
    from model.network.imf import IMFConfig
    from model.training.config import TrainConfig
    from model.training.loop import train

    ds = load_dataset(fb15k_slice)
    result = train(TrainConfig(dataset=str(fb15k_slice), epochs=6, lr=0.01, seed=0, patience=100), ds, progress=False, model_config=IMFConfig(dim=32, relation_dim=32))
    out = tmp_path_factory.mktemp("bundles") / "slice"
    return save_bundle(out, result.model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={"epochs": 6}, metrics={"valid": result.valid_metrics})


@pytest.fixture(scope="session")
def extras_bundle(slice_bundle: Path, fb15k_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """slice_bundle with its extras fitted (calibration + new-entity feature map)."""
    import shutil

    from model.pipeline import fit_extras

    out = tmp_path_factory.mktemp("extras") / "slice"
    shutil.copytree(slice_bundle, out)
    summary = fit_extras(out, dataset=fb15k_slice)
    assert summary["calibration"]["method"] in ("identity", "platt", "platt-family", "isotonic-family")
    return out
