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

from model.kg.dataset import load_dataset  # noqa: E402
from model.files import encode_record  # noqa: E402

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


def _read_tsv(path: Path) -> list[list[str]]:
    from model.files import decode_field, records

    return [[decode_field(c) for c in line.split("\t")] for _, line in records(path.read_text(encoding="utf-8"))]


def add_through_api(bundle: Path, held: list[list[str]], state_dir: Path) -> dict:
    """Start the real server with new entities enabled and POST every held-out entity (name and
    description only); returns timing figures. The records land in state_dir."""
    import time

    import httpx

    from bench.campaign import ServerProcess

    server = ServerProcess(bundle, {"IMF_ALLOW_NEW_ENTITIES": "true", "IMF_STATE_DIR": str(state_dir), "IMF_SAVE_INDEX": "false"})
    server.start(timeout=300)
    times = []
    try:
        with httpx.Client(base_url=server.base, timeout=60) as client:
            for key, name, desc in held:
                t0 = time.perf_counter()
                r = client.post("/entities", json={"id": key, "name": name, "description": desc})
                times.append(time.perf_counter() - t0)
                if r.status_code != 201:
                    raise RuntimeError(f"POST /entities {key}: {r.status_code} {r.text}")
            added = client.get("/info").json()["new_entities"]["added"]
    finally:
        server.stop()
    return {"added": added, "post_p50_ms": 1000 * float(np.median(times)), "post_p99_ms": 1000 * float(np.percentile(times, 99))}


def _ranks(scores, targets, known) -> np.ndarray:
    import torch

    from model.evaluation.ranking import filtered_ranks

    return filtered_ranks(scores, torch.as_tensor(targets), known).numpy()


def rank_directions(ev: np.ndarray, num_rel: int, scores, known, is_new) -> dict[str, np.ndarray]:
    """Filtered ranks of the triples ev (n, 3) in both directions, split by whether the query
    entity is new ("new as head") or the answer is ("new as answer"). scores(e, r) -> (B, N)."""
    import torch

    from model.kg.triples import query_relation

    res: dict[str, list] = {"new as head": [], "new as answer": []}
    for direction in ("tail", "head"):
        ents = ev[:, 0] if direction == "tail" else ev[:, 2]
        tgts = ev[:, 2] if direction == "tail" else ev[:, 0]
        rels = query_relation(ev[:, 1], direction, num_rel)
        for start in range(0, len(ev), 256):
            sl = slice(start, start + 256)
            with torch.no_grad():
                sc = scores(torch.from_numpy(ents[sl]), torch.from_numpy(rels[sl]))
            for e, rk in zip(ents[sl], _ranks(sc, tgts[sl], known.dense(ents[sl], rels[sl]))):
                res["new as head" if is_new(e) else "new as answer"].append(rk)
    return {k: np.asarray(v) for k, v in res.items()}


def evaluate_inductive(work: Path, *, post: bool = True) -> dict:
    """The figures of the module docstring (held-out model with API-added entities, seen model,
    random ranker), plus every feature-map variant on the same added entities."""
    import json as _json

    import torch

    from model.bundle.format import load_bundle
    from model.evaluation.ranking import summarize
    from model.pipeline import fit_extras
    from model.network.imf import expected_random_mrr
    from service.engine import Predictor
    from service.entities import FileStore

    full = load_dataset("fb15k-237", with_features=False)
    held = _read_tsv(work / "held_out.tsv")
    held_ids = [h[0] for h in held]
    heldout_bundle, seen_bundle = work / "heldout", work / "seen"
    out: dict = {"summary": _json.loads((work / "summary.json").read_text())}
    for b in (heldout_bundle, seen_bundle):
        if "calibration.json" not in load_bundle(b).manifest["files"]:
            fit_extras(b, dataset=work / "data" if b == heldout_bundle else "fb15k-237")
    out["feature_map"] = load_bundle(heldout_bundle).manifest["extras"]["feature_map"]
    state = work / "state"
    if post:
        if state.exists():
            shutil.rmtree(state)
        out["api"] = add_through_api(heldout_bundle, held, state)
    p = Predictor.load(heldout_bundle, index_kind="exact", save_index=False)
    records = [r for r in _json.loads("[" + ",".join(FileStore(state, p.bundle.fingerprint).path.read_text().split("\n")[:-1]) + "]")]
    assert p.added.add_records(records) == len(held)
    n_base, n_all = p.num_base, p.num_entities
    index = {e: i for i, e in enumerate(p.bundle.vocab.entity_ids)}
    index.update({e: n_base + i for i, e in enumerate(p.view.added_ids)})
    rel_index = {r: i for i, r in enumerate(p.bundle.vocab.relation_ids)}
    num_rel = p.num_relations
    full_ids = [(full.vocab.entity_ids[h], full.vocab.relation_ids[r], full.vocab.entity_ids[t]) for h, r, t in full.all_triples()]
    mapped = np.array([(index[h], rel_index[r], index[t]) for h, r, t in full_ids if h in index and t in index and r in rel_index])
    from model.kg.triples import AnswerIndex

    known_all = AnswerIndex(mapped, n_all, num_rel)
    ev = np.array([(index[h], rel_index[r], index[t]) for h, r, t in (line.split("\t") for line in (work / "eval.tsv").read_text().splitlines())])
    is_new = np.zeros(n_all, dtype=bool)
    is_new[n_base:] = True

    def rank_all(tables: dict) -> dict[str, np.ndarray]:
        def scores(e, r):
            qv = p.model.query_vectors(e, r, tables)
            return p.model.rescore(qv, p.model.decision_weights(r), tables, None)[1]

        return rank_directions(ev, num_rel, scores, known_all, lambda e: is_new[e])

    def report(ranks: dict[str, np.ndarray]) -> dict:
        both = np.concatenate(list(ranks.values()))
        return {k: {m: v for m, v in summarize(r).items() if m in ("mrr", "hits@1", "hits@10", "count")} for k, r in {**ranks, "both": both}.items()}

    out["api_added"] = report(rank_all(p.tables))
    # the other variants of the feature map, same records, same text vectors
    fmap = p.bundle.feature_map
    feats = {m: np.zeros((len(records), dim), dtype=np.float32) for m, dim in p.model.cfg.modalities.items()}
    pres = {m: np.zeros(len(records), dtype=bool) for m in p.model.cfg.modalities}
    import base64

    for i, rec in enumerate(records):
        feats["text"][i] = np.frombuffer(base64.b64decode(rec["text_vector"]), dtype=np.float32)
        pres["text"][i] = True
    out["variants"] = {}
    from model.bundle.feature_map import VARIANTS

    for variant in VARIANTS:
        rows = fmap.embed(p.model, feats, pres, variant)
        tables = {b: torch.cat([p.base_tables[b], rows[b]]) for b in p.branches}
        out["variants"][variant] = report(rank_all(tables))["both"]
    # the same triples, the same entities seen in training (same recipe)
    seen = load_bundle(seen_bundle)
    s_index = {e: i for i, e in enumerate(seen.vocab.entity_ids)}
    s_rel = {r: i for i, r in enumerate(seen.vocab.relation_ids)}
    ev_ids = [line.split("\t") for line in (work / "eval.tsv").read_text().splitlines()]
    s_ev = np.array([(s_index[h], s_rel[r], s_index[t]) for h, r, t in ev_ids])
    held_set = {s_index[h] for h in held_ids}
    s_tables = seen.model.entity_tables()
    held_mask = np.zeros(seen.num_entities, dtype=bool)
    held_mask[list(held_set)] = True
    res = rank_directions(s_ev, num_rel, lambda e, r: seen.model.score_candidates(e, r, tables=s_tables)[2], seen.known, lambda e: held_mask[e])
    out["seen_in_training"] = report(res)
    out["random"] = {"mrr": expected_random_mrr(n_all), "hits@10": 10 / n_all}
    out["models"] = {"heldout": load_bundle(heldout_bundle).manifest["metrics"]["valid"]["mrr"], "seen": seen.manifest["metrics"]["valid"]["mrr"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write the held-out dataset")
    p.add_argument("--dataset", default="fb15k-237")
    p.add_argument("--out", type=Path, default=WORK)
    p.add_argument("--count", type=int, default=HELD_OUT)
    p.add_argument("--seed", type=int, default=SEED)
    e = sub.add_parser("evaluate", help="add the held-out entities through the API and rank their test triples")
    e.add_argument("--work", type=Path, default=WORK)
    e.add_argument("--json", type=Path, default=None, help="write the figures here")
    e.add_argument("--no-post", action="store_true", help="reuse the entities an earlier run added")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        print(json.dumps(prepare(args.dataset, args.out, args.count, args.seed), indent=2))
    else:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        res = evaluate_inductive(args.work, post=not args.no_post)
        text = json.dumps(res, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
