"""Training throughput in (head, relation) queries per second, FB15k-237, 4 branches, CPU.

Each configuration runs real training steps (forward, the full loss, backward, Adam) on real
batches of the bundled FB15k-237 (branches structure, text, numeric, multimodal), after a few
warm-up steps; the figure is the median of --repeats timed windows. Configurations, all in the
same run: the defaults (cross-entropy, uniformly shuffled batches, float32), the paper's BCE
loss on the same batches, and the earlier defaults (BCE on relation-grouped batches, 8 groups:
faster per step, but a third of the validation MRR at equal epochs, docs/benchmarks.md). Speed
says nothing about quality per epoch: the learning curves in docs/benchmarks.md do.

    python bench/train_throughput.py --dims 128 --relation-dim 32 --batch-size 512   # the default model
    python bench/train_throughput.py --threads 2 --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.kg.dataset import load_dataset  # noqa: E402
from model.training.config import TrainConfig  # noqa: E402
from model.training.loop import batch_order, build_model, training_loss  # noqa: E402
from model.kg.triples import AnswerIndex  # noqa: E402
from model.network.imf import IMFConfig  # noqa: E402


def measure(ds, index, dim: int, relation_dim: int, batch: int, *, loss: str, groups: int, steps: int, repeats: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = build_model(ds, None, IMFConfig(dim=dim, relation_dim=relation_dim, output="softmax" if loss == "ce" else "sigmoid"))
    model.train()
    cfg = TrainConfig(loss=loss, relation_groups=groups, precision="fp32")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    q_ents, q_rels = index.query_entities(), index.query_relations()
    batches = batch_order(q_rels, batch, groups, np.random.default_rng(0))
    it = iter(batches)

    def step() -> int:
        idx = next(it)
        pos, ans = index.pairs(index.rows(q_ents[idx], q_rels[idx]))
        answers = (torch.from_numpy(pos), torch.from_numpy(ans))
        value, _ = training_loss(model, torch.from_numpy(q_ents[idx]), torch.from_numpy(q_rels[idx]), answers, cfg)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        return len(idx)

    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = sum(step() for _ in range(steps))
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


CONFIGS = {
    "defaults (CE, shuffled)": {"loss": "ce", "groups": 0},
    "BCE, shuffled": {"loss": "bce", "groups": 0},
    "BCE, 8 relation groups (old defaults)": {"loss": "bce", "groups": 8},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="128")
    ap.add_argument("--relation-dim", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("fb15k-237")
    index = AnswerIndex(ds.train, ds.num_entities, ds.num_relations)
    print(f"# FB15k-237: {ds.num_entities} entities, {len(index)} training queries per epoch; branches structure, text, numeric, multimodal")
    print(f"# CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, torch threads {args.threads}, torch {torch.__version__}, float32")
    print("| d | d_r | batch | " + " | ".join(CONFIGS) + " |")
    print("|---|---|---|" + "---|" * len(CONFIGS))
    for dim in (int(d) for d in args.dims.split(",")):
        common = dict(steps=args.steps, repeats=args.repeats, warmup=args.warmup)
        rates = {name: measure(ds, index, dim, args.relation_dim, args.batch_size, **cfg, **common) for name, cfg in CONFIGS.items()}
        base = rates["defaults (CE, shuffled)"]
        cells = [f"{r:.0f} q/s ({r / base:.2f}x)" for r in rates.values()]
        print(f"| {dim} | {args.relation_dim} | {args.batch_size} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
