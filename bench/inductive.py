"""Inductive benchmark: entities unseen in training, added through the API from text alone.

    python bench/inductive.py prepare                     # held-out dataset in runs/inductive/
    bash scripts/train_inductive.sh                       # the two models (same recipe)
    python bench/inductive.py evaluate --json bench/results/inductive.json

`prepare` holds out H entities of FB15k-237 (seeded; among entities with a readable text, at
least 2 test triples and a moderate training degree, so that removing them leaves the graph
intact) and writes a derived dataset without them: every triple touching one of them is
removed from train and valid, as are their feature rows; entities or relations left without
a training triple go too. The evaluation triples are the original test triples with exactly
one end in H (the other end kept).

`evaluate` starts the real server on the held-out model's bundle with IMF_ALLOW_NEW_ENTITIES,
POSTs every held-out entity with its name and description only (no numbers, no triples),
then ranks the evaluation triples in both directions, filtered against every known triple of
the full dataset: "new as head" (query (new, r, ?)) and "new as answer" (query (known, r^-1,
?) whose answer is the new entity, ranked among all N + H entities). The same triples are
ranked by the model trained with the entities seen (same recipe, full dataset), and against a
uniformly random ranker. The added entities are read back from the store the server wrote,
so the representation measured is exactly the one the API built.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.data import load_dataset  # noqa: E402
from model.textio import encode_record  # noqa: E402

WORK = REPO / "runs" / "inductive"
HELD_OUT = 300
SEED = 0
MIN_TEST = 2
DEGREE = (5, 120)  # training degree of a held-out entity: no hubs, no near-isolated nodes


def choose_held_out(ds, count: int, seed: int) -> np.ndarray:
    """Entity indices to hold out (sorted), as the module docstring describes."""
    train, test = ds.split("train"), ds.split("test")
    deg = np.bincount(train[:, [0, 2]].ravel(), minlength=ds.num_entities)
    tdeg = np.bincount(test[:, [0, 2]].ravel(), minlength=ds.num_entities)
    has_text = np.zeros(ds.num_entities, dtype=bool)
    if "text" in ds.features:
        has_text = ds.features["text"].present
    ok = has_text & (tdeg >= MIN_TEST) & (deg >= DEGREE[0]) & (deg <= DEGREE[1])
    pool = np.flatnonzero(ok)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False))


def prepare(src: str, out: Path, count: int, seed: int) -> dict:
    ds = load_dataset(src)
    held = choose_held_out(ds, count, seed)
    is_held = np.zeros(ds.num_entities, dtype=bool)
    is_held[held] = True

    def keep(tr: np.ndarray) -> np.ndarray:
        return tr[~(is_held[tr[:, 0]] | is_held[tr[:, 2]])]

    train = keep(ds.split("train"))
    seen_e = np.zeros(ds.num_entities, dtype=bool)
    seen_e[train[:, 0]] = seen_e[train[:, 2]] = True
    seen_r = np.zeros(ds.num_relations, dtype=bool)
    seen_r[train[:, 1]] = True

    def in_train(tr: np.ndarray) -> np.ndarray:
        return tr[seen_e[tr[:, 0]] & seen_e[tr[:, 2]] & seen_r[tr[:, 1]]]

    valid, test = in_train(keep(ds.split("valid"))), in_train(keep(ds.split("test")))
    full_test = ds.split("test")
    one_end = is_held[full_test[:, 0]] ^ is_held[full_test[:, 2]]
    other = np.where(is_held[full_test[:, 0]], full_test[:, 2], full_test[:, 0])
    eval_triples = full_test[one_end & seen_e[other] & seen_r[full_test[:, 1]]]

    if out.exists():
        shutil.rmtree(out)
    data = out / "data"
    (data / "features").mkdir(parents=True)
    ents = np.flatnonzero(seen_e)
    rels = np.flatnonzero(seen_r)
    (data / "entities.tsv").write_text(
        "".join(f"{ds.entity_ids[i]}\t{ds.entity_names[i]}\t{ds.entity_descriptions[i]}\n" for i in ents), encoding="utf-8"
    )
    (data / "relations.tsv").write_text("".join(f"{ds.relation_ids[i]}\t{ds.relation_names[i]}\n" for i in rels), encoding="utf-8")
    for name, tr in (("train", train), ("valid", valid), ("test", test)):
        (data / f"{name}.tsv").write_text(
            "".join(f"{ds.entity_ids[h]}\t{ds.relation_ids[r]}\t{ds.entity_ids[t]}\n" for h, r, t in tr), encoding="utf-8"
        )
    meta = json.loads((ds.root / "dataset.json").read_text(encoding="utf-8"))
    meta = {"name": f"{meta['name']}-inductive", "description": f"{meta['name']} without {len(held)} held-out entities (bench/inductive.py)",
            "default_modalities": meta.get("default_modalities")}
    (data / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    # Feature rows of the kept entities only, in the source's row order.
    for m, feat in ds.features.items():
        src_dir = ds.root / "features"
        ids = (src_dir / f"{m}.ids.txt").read_text(encoding="utf-8").split("\n")[:-1]
        matrix = np.load(src_dir / f"{m}.npy")
        index = {e: i for i, e in enumerate(ds.entity_ids)}
        rows = [j for j, e in enumerate(ids) if seen_e[index[e]]]
        np.save(data / "features" / f"{m}.npy", matrix[rows])
        (data / "features" / f"{m}.ids.txt").write_text("".join(f"{ids[j]}\n" for j in rows), encoding="utf-8")
        extra = src_dir / f"{m}.columns.txt"
        if extra.is_file():
            shutil.copy(extra, data / "features" / extra.name)
    (out / "held_out.tsv").write_text(
        "".join(encode_record([ds.entity_ids[i], ds.entity_names[i], ds.entity_descriptions[i]]) for i in held), encoding="utf-8"
    )
    (out / "eval.tsv").write_text(
        "".join(f"{ds.entity_ids[h]}\t{ds.relation_ids[r]}\t{ds.entity_ids[t]}\n" for h, r, t in eval_triples), encoding="utf-8"
    )
    summary = {
        "held_out": int(len(held)),
        "entities_kept": int(len(ents)),
        "entities_dropped_without_triples": int(ds.num_entities - len(ents) - len(held)),
        "relations_kept": int(len(rels)),
        "train": int(len(train)), "valid": int(len(valid)), "test": int(len(test)),
        "train_removed": int(len(ds.split("train")) - len(train)),
        "eval_triples": int(len(eval_triples)),
        "eval_new_head": int(is_held[eval_triples[:, 0]].sum()),
        "eval_new_tail": int(is_held[eval_triples[:, 2]].sum()),
        "seed": seed,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write the held-out dataset")
    p.add_argument("--dataset", default="fb15k-237")
    p.add_argument("--out", type=Path, default=WORK)
    p.add_argument("--count", type=int, default=HELD_OUT)
    p.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        print(json.dumps(prepare(args.dataset, args.out, args.count, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
