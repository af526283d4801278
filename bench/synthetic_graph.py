"""Time per training epoch, sampled vs 1-vs-all, on a synthetic graph of 1M entities and 10M triples.

    python bench/synthetic_graph.py --entities 1000000 --triples 10000000 --threads 1 \\
        --sampled-steps 200 --full-steps 3 --full-batches 32,64

The graph (built in memory, a few seconds): heads and tails drawn from a power law over the
entities (p ~ 1 / (rank + 10)), relations from a power law over 237, duplicates dropped, 1,000
triples held out as validation; a 32-d "text" modality on every entity and a 16-d "numeric"
one on 90% of them (random features): the branches of the FB15k-237 model (structure, text,
numeric, multimodal). The model and optimizer are those `imf train` builds for a graph of this
size (sized defaults: d = 128, d_r = 64, batch 512, Adam).

What is timed: whole training steps (batch assembly, sample drawing, forward, backward, Adam
step) through the training loop's own functions, `--sampled-steps` of sampled training
(`--negatives`, default 4096; LazyAdam on sparse entity-table gradients, as `train` does in
one process; `--dense-adam-steps` also times it with torch's dense Adam) and `--full-steps` of 1-vs-all at each batch size of
`--full-batches` (1-vs-all at batch 512 needs B x N x 4 branches float32 logits, 8 GB, plus their
gradients: more memory than a 24 GB machine shared with others can give, so it is timed at
smaller batches and the cost per step fitted as a + b x B, then extrapolated to 512). The epoch
time is extrapolated: seconds per step x steps per epoch (training queries / 512). Everything
is printed as JSON, the extrapolated figures marked as such. `--dataset fb15k-237` times the
same steps on a real graph instead (its default modalities).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.evaluation.ranking import rank_triples
from model.kg.dataset import KGDataset, ModalityFeatures, load_dataset
from model.kg.triples import AnswerIndex
from model.network.imf import IMFConfig
from model.training.config import TrainConfig
from model.training.loop import build_model, training_loss
from model.training.sampling import (
    LazyAdam,
    NegativeSampler,
    draw_sample,
    sampled_training_loss,
    sparse_entity_tables,
)
from model.training.sizing import sized_settings


def make_graph(entities: int, triples: int, relations: int = 237, seed: int = 0) -> KGDataset:
    """An in-memory power-law graph (the module docstring)."""
    rng = np.random.default_rng(seed)
    pe = 1.0 / (np.arange(entities) + 10.0)
    pe /= pe.sum()
    cdf = np.cumsum(pe)
    perm = rng.permutation(entities)  # popular entities spread over the id range

    def ents(n: int) -> np.ndarray:
        return perm[np.minimum(np.searchsorted(cdf, rng.random(n)), entities - 1)]

    pr = 1.0 / (np.arange(relations) + 2.0)
    pr /= pr.sum()
    n = int(triples * 1.05)  # a few are duplicates
    t = np.stack([ents(n), rng.choice(relations, n, p=pr), ents(n)], axis=1).astype(np.int64)
    key = (t[:, 0] * relations + t[:, 1]) * entities + t[:, 2]
    _, first = np.unique(key, return_index=True)
    t = t[np.sort(first)][:triples]
    t = t[rng.permutation(len(t))]
    valid, train = t[:1000], t[1000:]
    feats = {
        "text": ModalityFeatures("text", rng.standard_normal((entities, 32), dtype=np.float32), np.ones(entities, dtype=bool)),
        "numeric": ModalityFeatures("numeric", rng.standard_normal((entities, 16), dtype=np.float32), rng.random(entities) > 0.1),
    }
    ids = [f"e{i}" for i in range(entities)]
    rels = [f"r{i}" for i in range(relations)]
    return KGDataset(
        name=f"synthetic-{entities}", root=Path("."), entity_ids=ids, entity_names=ids, entity_descriptions=[""] * entities,
        relation_ids=rels, relation_names=rels, train=train, valid=valid, test=valid, features=feats, fingerprint="synthetic",
    )


def time_steps(ds: KGDataset, index: AnswerIndex, q_ents: np.ndarray, q_rels: np.ndarray, batch: int, steps: int, negatives: int, seed: int = 0, dense_adam: bool = False) -> dict:
    """Seconds per training step (after one warm-up step), and the share of the optimizer step."""
    sized = sized_settings(ds.num_entities, ds.num_relations, len(ds.train))
    mcfg = IMFConfig(dim=sized["dim"], relation_dim=sized["relation_dim"], input_dropout=0.2, hidden_dropout1=0.2, hidden_dropout2=0.3)
    cfg = TrainConfig(dataset="synthetic", batch_size=batch, lr=sized["lr"], negatives=negatives)
    torch.manual_seed(seed)
    model = build_model(ds, None, mcfg)
    model.train()
    # As train() does: sampled training in one process = sparse entity-table gradients + LazyAdam.
    sparse_entity_tables(model, bool(negatives) and not dense_adam)
    opt_cls = LazyAdam if negatives and not dense_adam else torch.optim.Adam
    opt = opt_cls((p for p in model.parameters() if p.requires_grad), lr=cfg.lr, fused=True)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    sampler = NegativeSampler(ds.num_entities, negatives) if negatives else None
    fwd_bwd, opt_s, sizes = [], [], []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        idx = rng.choice(len(q_ents), batch, replace=False)
        ents_np, rels_np = q_ents[idx], q_rels[idx]
        heads, rels = torch.from_numpy(ents_np), torch.from_numpy(rels_np)
        pos, ans = index.pairs(index.rows(ents_np, rels_np))
        if sampler is None:
            loss, _ = training_loss(model, heads, rels, (torch.from_numpy(pos), torch.from_numpy(ans)), cfg, gen)
        else:
            sample = draw_sample(sampler, heads, torch.from_numpy(ans), gen)
            sizes.append((len(sample.candidates), len(sample.ids)))
            loss, _ = sampled_training_loss(model, sample, rels, torch.from_numpy(pos), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if step > 0:  # the first step warms up allocators and kernels
            fwd_bwd.append(t1 - t0)
            opt_s.append(t2 - t1)
    step_s = float(np.mean(np.add(fwd_bwd, opt_s)))
    out = {"batch": batch, "steps_timed": steps, "s_per_step": step_s, "optimizer_s_per_step": float(np.mean(opt_s)), "final_loss": float(loss.detach())}
    if sizes:
        out["mean_candidates"] = float(np.mean([c for c, _ in sizes]))
        out["mean_entities_touched"] = float(np.mean([u for _, u in sizes]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--triples", type=int, default=10_000_000)
    ap.add_argument("--dataset", default=None, help="time steps on this dataset (built-in name or directory) instead of a synthetic graph")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--negatives", type=int, default=4096)
    ap.add_argument("--sampled-steps", type=int, default=200)
    ap.add_argument("--full-steps", type=int, default=3)
    ap.add_argument("--dense-adam-steps", type=int, default=0, help="also time sampled steps with torch's dense Adam (no LazyAdam)")
    ap.add_argument("--full-batches", default="32,64", help="comma list of batch sizes for 1-vs-all ('' skips it)")
    ap.add_argument("--eval-triples", type=int, default=0, help="also time exact validation on this many triples (both directions)")
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ds = load_dataset(args.dataset) if args.dataset else make_graph(args.entities, args.triples)
    index = AnswerIndex(ds.train, ds.num_entities, ds.num_relations)
    q_ents, q_rels = index.query_entities(), index.query_relations()
    batch = int(sized_settings(ds.num_entities, ds.num_relations, len(ds.train))["batch_size"])
    steps_per_epoch = -(-len(q_ents) // batch)
    res: dict = {
        "machine": f"{platform.machine()} CPU, {args.threads} torch thread(s), torch {torch.__version__}",
        "entities": ds.num_entities, "train_triples": len(ds.train), "training_queries": len(q_ents),
        "batch": batch, "steps_per_epoch": steps_per_epoch, "graph_build_s": time.perf_counter() - t0,
    }
    print(json.dumps(res), flush=True)
    s = time_steps(ds, index, q_ents, q_rels, batch, args.sampled_steps, args.negatives)
    s["epoch_s_extrapolated"] = s["s_per_step"] * steps_per_epoch
    res["sampled"] = {"negatives": args.negatives, **s}
    print(json.dumps(res["sampled"]), flush=True)
    if args.dense_adam_steps:
        d = time_steps(ds, index, q_ents, q_rels, batch, args.dense_adam_steps, args.negatives, dense_adam=True)
        d["epoch_s_extrapolated"] = d["s_per_step"] * steps_per_epoch
        res["sampled_dense_adam"] = {"negatives": args.negatives, **d}
        print(json.dumps(res["sampled_dense_adam"]), flush=True)
    if args.eval_triples:
        # Validation is exact 1-vs-all whatever the training mode: time it on a few triples
        # (both directions) at --eval-batch-size, extrapolated to the default validation subset.
        sized = sized_settings(ds.num_entities, ds.num_relations, len(ds.train))
        torch.manual_seed(0)
        model = build_model(ds, None, IMFConfig(dim=sized["dim"], relation_dim=sized["relation_dim"])).eval()
        known = AnswerIndex(np.concatenate([ds.train, ds.valid]), ds.num_entities, ds.num_relations)
        t1 = time.perf_counter()
        with torch.no_grad():
            tables = model.entity_tables()  # once per validation run
        t2 = time.perf_counter()
        rank_triples(model, ds.valid[: args.eval_triples], known, batch_size=args.eval_batch_size, tables=tables)
        per_triple = (time.perf_counter() - t2) / args.eval_triples
        subset = TrainConfig().valid_subset or len(ds.valid)
        res["validation"] = {"triples_timed": args.eval_triples, "batch_size": args.eval_batch_size, "tables_s": t2 - t1, "s_per_triple": per_triple,
                             "valid_subset": subset, "s_per_validation_extrapolated": t2 - t1 + per_triple * subset}
        print(json.dumps(res["validation"]), flush=True)
        del model
    full_batches = [int(b) for b in args.full_batches.split(",") if b.strip()]
    if full_batches:
        runs = []
        for b in full_batches:
            runs.append(time_steps(ds, index, q_ents, q_rels, b, args.full_steps, 0))
            print(json.dumps(runs[-1]), flush=True)
        slope, icpt = (np.polyfit([r["batch"] for r in runs], [r["s_per_step"] for r in runs], 1) if len(runs) >= 2 else (0.0, 0.0))
        if len(runs) < 2 or slope <= 0 or icpt < 0:
            # Too noisy to fit (a shared machine): the cost of a step grows with the batch, so
            # the largest batch measured gives a lower bound, per query an upper one.
            big = max(runs, key=lambda r: r["batch"])
            res["one_vs_all_bounds"] = {
                "epoch_s_lower_bound": big["s_per_step"] * steps_per_epoch,
                "epoch_s_upper_bound": big["s_per_step"] * batch / big["batch"] * steps_per_epoch,
            }
            icpt, slope = 0.0, big["s_per_step"] / big["batch"]
        step512 = icpt + slope * batch
        res["one_vs_all"] = {
            "measured": runs,
            "s_per_step_at_batch_extrapolated": step512,
            "epoch_s_extrapolated": step512 * steps_per_epoch,
        }
        res["epoch_time_ratio_extrapolated"] = res["one_vs_all"]["epoch_s_extrapolated"] / res["sampled"]["epoch_s_extrapolated"]
        res["step_time_ratio_at_64_vs_sampled_512"] = next((r["s_per_step"] for r in runs if r["batch"] == 64), float("nan")) / res["sampled"]["s_per_step"]
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
