"""Training throughput in (head, relation) queries per second, FB15k-237, 4 branches, CPU.

Each configuration runs real training steps (forward, the full loss, backward, Adam) on real
batches of the bundled FB15k-237 (branches structure, text, numeric, multimodal), after a few
warm-up steps; the figure is the median of --repeats timed windows. The in-run baseline is the
same code with the speed-ups off (float32 matmuls, uniformly random batches, unfused Adam), so the
ratio shows what they buy on this machine; the reference implementation's published-here figures
(84 q/s at d=256, 244 q/s at d=128, batch 256, 4 branches, 2 cores) are quoted for orientation.

    python bench/train_throughput.py                # d=200 (default size), 256 and 128, batch 256
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

from model.data import load_dataset  # noqa: E402
from model.train import TrainConfig, batch_order, build_model, resolve_precision, training_loss  # noqa: E402
from model.triples import AnswerIndex  # noqa: E402

REFERENCE = {256: 84.0, 128: 244.0}  # reference implementation, queries/s (issue #2)


def measure(ds, index, dim: int, batch: int, *, precision: str, groups: int, fused_adam: bool, steps: int, repeats: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = build_model(ds, None, dim=dim, relation_dim=dim)
    model.train()
    cfg = TrainConfig(precision=precision, relation_groups=groups)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused_adam)
    q_ents, q_rels = index.query_entities(), index.query_relations()
    batches = batch_order(q_rels, batch, groups, np.random.default_rng(0))
    it = iter(batches)

    def step() -> int:
        idx = next(it)
        labels = index.dense(q_ents[idx], q_rels[idx])
        loss, _ = training_loss(model, torch.from_numpy(q_ents[idx]), torch.from_numpy(q_rels[idx]), labels, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="200,256,128")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("fb15k-237")
    index = AnswerIndex(ds.train, ds.num_entities, ds.num_relations)
    fast_precision = resolve_precision("auto", torch.device("cpu"))
    print(f"# FB15k-237: {ds.num_entities} entities, {len(index)} training queries per epoch; branches structure, text, numeric, multimodal")
    print(f"# CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, torch threads {args.threads}, torch {torch.__version__}; auto precision -> {fast_precision}")
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        common = dict(steps=args.steps, repeats=args.repeats, warmup=args.warmup)
        fast = measure(ds, index, dim, args.batch_size, precision=fast_precision, groups=8, fused_adam=True, **common)
        base = measure(ds, index, dim, args.batch_size, precision="fp32", groups=0, fused_adam=False, **common)
        rows.append((dim, fast, base))
        print(f"d={dim}: {fast:.0f} q/s (defaults) vs {base:.0f} q/s (fp32, random batches, unfused Adam)", flush=True)
    print()
    print(f"| d | batch | this project, defaults ({fast_precision}) | same code, speed-ups off | speed-ups | reference impl. (quoted) | vs reference |")
    print("|---|---|---|---|---|---|---|")
    for dim, fast, base in rows:
        ref = REFERENCE.get(dim)
        print(f"| {dim} | {args.batch_size} | {fast:.0f} q/s | {base:.0f} q/s | {fast / base:.2f}x | {f'{ref:.0f} q/s' if ref else '-'} | {f'{fast / ref:.1f}x' if ref else '-'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
