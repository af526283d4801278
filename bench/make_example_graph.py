"""Writes examples/fb-1k/: a small graph of one's own as a user would bring it (CSV files with
readable ids), cut from FB15k-237 with the Freebase numeric literals of its entities.

    python bench/make_example_graph.py --numeric RAW/FB15K_NumericalTriples.txt

The entities: `bench/graphs.fb_1k` (the FB15k-237 entities with numeric features, ranked by
degree, the 1,500 most connected skipped: their dense core would make a graph unlike a typical
export, 40 triples per entity; then taken in order until 1,100 are connected to each other);
the triples: every FB15k-237 triple (any split) between two of them. Ids are the entity names made into slugs (a suffix where two names
collide, so shared names stay shared, as in real exports). Deterministic; the output is
committed (about 0.6 MB), so users never run this.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from model.features.numeric import read_numeric_triples
from model.kg.dataset import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graphs import fb_1k  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return s or "entity"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--numeric", type=Path, required=True, help="FB15K_NumericalTriples.txt")
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "fb-1k")
    args = ap.parse_args()
    ds = load_dataset("fb15k-237")
    values, _ = read_numeric_triples(args.numeric)
    used, sub = fb_1k(ds)  # the selection (bench/graphs.py), shared with bench/sizing.py
    names = ds.entity_names
    ids: dict[int, str] = {}
    taken: Counter[str] = Counter()
    for e in used:
        base = slug(names[e])
        taken[base] += 1
        ids[int(e)] = base if taken[base] == 1 else f"{base}_{taken[base]}"
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "triples.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["head", "relation", "tail"])
        for h, r, t in sub:
            w.writerow([ids[int(h)], ds.relation_ids[int(r)], ids[int(t)]])
    with open(args.out / "entities.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "description"])
        for e in used:
            w.writerow([ids[int(e)], names[e], ds.entity_descriptions[e]])
    with open(args.out / "attributes.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["entity", "attribute", "value"])
        for e in used:
            for attr, vals in sorted(values[ds.entity_ids[e]].items()):
                for v in vals:
                    w.writerow([ids[int(e)], attr, repr(v)])
    print(f"wrote {args.out}: {len(used)} entities, {len(np.unique(sub[:, 1]))} relations, {len(sub)} triples")


if __name__ == "__main__":
    main()
