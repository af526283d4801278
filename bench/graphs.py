"""Small graphs cut from the bundled datasets, for measurements on graphs of other sizes
(bench/sizing.py) and for the example CSV graph (bench/make_example_graph.py).

A cut keeps the chosen entities, every triple (of any split) between two of them, re-split
with model.kg.split.split_triples (80/10/10, seed 0), and the source's feature rows of the
chosen entities (the encoders are per entity, so the rows are what the encoders would give).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from model.kg.builtin import RawKG, write_dataset
from model.kg.dataset import KGDataset, load_dataset
from model.kg.split import split_triples


def connected_core(ds: KGDataset, ranked: list[int], want: int, skip: int = 0, step: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Take entities from `ranked[skip:]` in order until at least `want` of them are joined by a
    triple among themselves. Returns (entity indices used, the triples among them (T, 3))."""
    triples = ds.all_triples()
    k = want
    while True:
        chosen = np.zeros(ds.num_entities, dtype=bool)
        chosen[ranked[skip:skip + k]] = True
        sub = triples[chosen[triples[:, 0]] & chosen[triples[:, 2]]]
        used = np.unique(np.r_[sub[:, 0], sub[:, 2]])
        if len(used) >= want or skip + k >= len(ranked):
            return used, sub
        k += step


def by_degree(ds: KGDataset, where: np.ndarray | None = None) -> list[int]:
    """Entity indices, most connected first (ties by index), optionally only where `where`."""
    t = ds.all_triples()
    degree = np.bincount(np.r_[t[:, 0], t[:, 2]], minlength=ds.num_entities)
    return [int(i) for i in np.argsort(-degree, kind="stable") if where is None or where[i]]


def fb_1k(ds: KGDataset | None = None) -> tuple[np.ndarray, np.ndarray]:
    """examples/fb-1k: FB15k-237 entities with numeric literals, the 1,500 most connected
    skipped (their dense core is unlike a typical export: 40 triples per entity), then by
    degree until 1,100 are connected: 1,103 entities, 86 relations, 3,869 triples."""
    ds = ds or load_dataset("fb15k-237")
    return connected_core(ds, by_degree(ds, ds.features["numeric"].present), 1100, skip=1500)


def wn9_1500(ds: KGDataset | None = None) -> tuple[np.ndarray, np.ndarray]:
    """WN9-IMG's 1,500 best-connected entities (by degree, until 1,500 are connected)."""
    ds = ds or load_dataset("wn9-img")
    return connected_core(ds, by_degree(ds), 1500)


def write_cut(ds: KGDataset, used: np.ndarray, sub: np.ndarray, out: Path, name: str, seed: int = 0) -> Path:
    """Write the cut as a dataset directory at `out` (replaced), with its feature rows."""
    triples = [(ds.entity_ids[h], ds.relation_ids[r], ds.entity_ids[t]) for h, r, t in sub]
    splits, report = split_triples(triples, (0.8, 0.1, 0.1), seed=seed)
    keep = set(int(e) for e in used)
    raw = RawKG(
        name=name,
        description=f"a cut of {ds.name}: {len(used)} entities (bench/graphs.py)",
        splits=splits,
        entity_names={ds.entity_ids[e]: ds.entity_names[e] for e in keep},
        entity_descriptions={ds.entity_ids[e]: ds.entity_descriptions[e] for e in keep},
        relation_names={r: n for r, n in zip(ds.relation_ids, ds.relation_names)},
        default_modalities=list(ds.default_modalities),
        sources=[f"{ds.name} (fingerprint {ds.fingerprint[:12]})"],
        cleaning=report,
    )
    if out.exists():
        shutil.rmtree(out)
    write_dataset(raw, out)
    feats = out / "features"
    feats.mkdir()
    for m, f in ds.features.items():
        rows = [e for e in sorted(keep) if f.present[e]]
        if not rows:
            continue  # no entity of the cut has this modality
        np.save(feats / f"{m}.npy", f.matrix[rows].astype(np.float32))
        (feats / f"{m}.ids.txt").write_text("".join(ds.entity_ids[e] + "\n" for e in rows), encoding="utf-8")
        cols = ds.root / "features" / f"{m}.columns.txt"
        if cols.exists():
            shutil.copy(cols, feats / cols.name)
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    meta["default_modalities"] = [m for m in ds.default_modalities if (feats / f"{m}.npy").exists()]
    (out / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out
