"""Quality benchmark: IMF against structure-only and ablations, test metrics of the selected model.

Every run trains with `python -m model train` (model selection and early stopping on the
validation split only), then `python -m model evaluate --split test --json` scores the selected
model once on the test split. Runs can go in parallel (on a GPU several small runs share it
well; on a 2-core CPU give each `--threads 1`).

    python bench/quality.py --dataset wn9-img --epochs 200 --patience 5 --parallel 2 --threads 1
    python bench/quality.py --dataset db15k --runs imf,structure-only --epochs 40 --device cuda

Prints one JSON line per finished run and, at the end, a markdown table; writes both to
bench/results/quality-DATASET.{json,md} (--results), the bundles to runs/quality-DATASET/
(--out, gitignored). Each result keeps the run's learning curve (validation MRR per epoch and
the training wall time so far), which bench/learning_curves.py draws.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.kg.dataset import load_dataset  # noqa: E402


def run_specs(dataset: str) -> dict[str, list[str]]:
    """Run name -> extra `imf train` arguments, from the dataset's default modalities."""
    ds = load_dataset(dataset)
    mods = list(ds.default_modalities or sorted(ds.features))
    specs = {
        "imf": [],
        "structure-only": ["--modalities", "none"],
        "with-contrastive": ["--contrastive-weight", "0.1"],
        "equal-weights": ["--decision-fusion", "equal"],
        "bce": ["--loss", "bce"],
        # cross-entropy weighted per training triple (the default) or per query (the earlier default)
        "per-answer": ["--per-answer"],
        "per-query": ["--per-query"],
        # batching: relation-grouped batches (the earlier default) against uniform ones
        "ce-grouped": ["--relation-groups", "8"],
        "bce-grouped": ["--loss", "bce", "--relation-groups", "8"],
    }
    if len(mods) > 1:
        for m in mods:
            specs[f"without-{m}"] = ["--modalities", ",".join(x for x in mods if x != m)]
    return specs


def one_run(name: str, extra: list[str], args: argparse.Namespace, out_root: Path) -> dict:
    bundle = out_root / name
    cmd = [
        sys.executable, "-m", "model", "train", "--dataset", args.dataset, "--out", str(bundle), "--overwrite", "--no-sizing",
        "--epochs", str(args.epochs), "--dim", str(args.dim), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        *(["--relation-dim", str(args.relation_dim)] if args.relation_dim else []),
        "--device", args.device, "--seed", str(args.seed), "--patience", str(args.patience), "--quiet",
        *(["--max-minutes", str(args.max_minutes)] if args.max_minutes else []),
        *(["--threads", str(args.threads)] if args.threads else []),
        *args.train_args, *extra,
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    train_s = time.monotonic() - t0
    if proc.returncode != 0:
        return {"run": name, "error": proc.stderr[-2000:], "command": " ".join(cmd)}
    ev = subprocess.run(
        [sys.executable, "-m", "model", "evaluate", str(bundle), "--split", "test", "--json", "--device", args.device],
        cwd=REPO, capture_output=True, text=True,
    )
    if ev.returncode != 0:
        return {"run": name, "error": ev.stderr[-2000:]}
    test = json.loads(ev.stdout)
    manifest = json.loads((bundle / "manifest.json").read_text())
    tr = manifest["training"]
    return {
        "run": name,
        "args": extra,
        "branches": manifest["branches"],
        "train_seconds": round(train_s, 1),
        "epochs_run": tr["epochs_run"],
        "best_epoch": tr["best_epoch"],
        "stopped_by": tr["stopped_by"],
        "precision": tr.get("precision"),
        "valid_mrr": manifest["metrics"]["valid"]["mrr"],
        "test": {k: test[k] for k in ("mrr", "mr", "hits@1", "hits@3", "hits@10")},
        "test_per_branch_mrr": {b: m["mrr"] for b, m in test["per_branch"].items()},
        "test_per_direction_mrr": {d: m["mrr"] for d, m in test["per_direction"].items()},
        "modalities_real": {m: v["coverage"] for m, v in manifest["modalities"].items()},
        "history": tr["history"],
        "command": " ".join(cmd[1:]),
    }


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"Dataset {meta['dataset']}, d={meta['dim']}, d_r={meta.get('relation_dim') or meta['dim']}, batch {meta['batch_size']}, lr {meta['lr']}, up to {meta['epochs']} epochs "
        f"(early stopping on valid, patience {meta['patience']}), seed {meta['seed']}, device {meta['device_name']}.",
        "",
        "| run | branches | valid MRR | test MRR | MR | H@1 | H@3 | H@10 | epochs (best) | train time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['run']} | failed | | | | | | | | |")
            continue
        t = r["test"]
        lines.append(
            f"| {r['run']} | {', '.join(r['branches'])} | {r['valid_mrr']:.4f} | **{t['mrr']:.4f}** | {t['mr']:.0f} | {t['hits@1']:.4f} | "
            f"{t['hits@3']:.4f} | {t['hits@10']:.4f} | {r['epochs_run']} ({r['best_epoch']}) | {r['train_seconds'] / 60:.1f} min |"
        )
    lines += ["", "Per-branch test MRR (each branch ranked alone):", "", "| run | " + " | ".join(["structure", "text", "numeric", "visual", "multimodal"]) + " |", "|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            continue
        pb = r["test_per_branch_mrr"]
        lines.append(f"| {r['run']} | " + " | ".join(f"{pb[b]:.4f}" if b in pb else "-" for b in ["structure", "text", "numeric", "visual", "multimodal"]) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fb15k-237")
    ap.add_argument("--runs", default=None, help="comma list of run names (default: all)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--dim", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=None, help="per-run wall-time cap (safety net)")
    ap.add_argument("--relation-dim", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="folder for the bundles (default runs/quality-DATASET)")
    ap.add_argument("--results", type=Path, default=None, help="results prefix (default bench/results/quality-DATASET)")
    ap.add_argument("train_args", nargs="*", help="extra `imf train` arguments for every run (after --)")
    args = ap.parse_args()
    specs = run_specs(args.dataset)
    if args.runs:
        wanted = args.runs.split(",")
        unknown = [w for w in wanted if w not in specs]
        if unknown:
            ap.error(f"unknown run(s) {unknown}; known: {list(specs)}")
        specs = {k: specs[k] for k in wanted}
    out_root = args.out or REPO / "runs" / f"quality-{args.dataset}"
    out_root.mkdir(parents=True, exist_ok=True)
    results_prefix = args.results or REPO / "bench" / "results" / f"quality-{args.dataset}"
    results_prefix.parent.mkdir(parents=True, exist_ok=True)
    device_name = args.device
    if args.device.startswith("cuda"):
        import torch

        device_name = f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    else:
        device_name = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    meta = {**{k: v for k, v in vars(args).items() if k not in ("out", "results")}, "device_name": device_name}
    results: list[dict] = []
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {name: pool.submit(one_run, name, extra, args, out_root) for name, extra in specs.items()}
        for name, fut in futures.items():
            res = fut.result()
            results.append(res)
            print(json.dumps(res), flush=True)
    meta["wall_seconds"] = round(time.monotonic() - t0, 1)
    table = markdown(results, meta)
    meta["out"] = str(out_root)
    results_prefix.with_suffix(".json").write_text(json.dumps({"meta": {k: str(v) if isinstance(v, Path) else v for k, v in meta.items()}, "results": results}, indent=2))
    results_prefix.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"total wall time {meta['wall_seconds'] / 60:.1f} min")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
