"""The sized defaults (model/training/sizing.py) against a small search, on graphs of five sizes.

For each graph, every configuration trains with the same time budget (one thread each, seed 0,
early stopping on the validation split, patience 5): the sized defaults, the fixed defaults
they replace (d = d_r = 200, batch 256, lr 0.001, dropouts 0.3/0.4/0.5: FB15k-237's), and a few
variations of the sized settings (each changes one thing). The search's best is the one with
the highest validation MRR; the test MRR of each selected model is measured once, after
training, and never used to choose.

    python bench/sizing.py --parallel 2                       # all five graphs (about 80 min, 2 cores)
    python bench/sizing.py --graphs fb-1k,wn9-1500 --parallel 2

Graphs: fb-1k and wn9-1500 are cuts of FB15k-237 and WN9-IMG (bench/graphs.py; fb-1k is the
graph of examples/fb-1k), written to runs/sizing/data/; wn9-img, db15k and fb15k-237 are the
bundled datasets. --max-budget caps the time budget of the large graphs (FB15k-237's sized
budget is an hour per configuration); the cap is printed with the results.
Writes bench/results/sizing.{json,md}; bundles go to runs/sizing/ (gitignored).
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
sys.path.insert(0, str(REPO / "bench"))

from graphs import fb_1k, wn9_1500, write_cut  # noqa: E402

from model.kg.dataset import load_dataset  # noqa: E402
from model.training.sizing import SMALL_GRAPH_TRIPLES, sized_settings  # noqa: E402

# The fixed defaults before sizing (IMFConfig / TrainConfig, tuned on FB15k-237).
FIXED = {"dim": 200, "relation_dim": 200, "batch_size": 256, "lr": 0.001, "lr_decay": 1.0,
         "input_dropout": 0.3, "hidden_dropout1": 0.4, "hidden_dropout2": 0.5}
CUTS = {"fb-1k": fb_1k, "wn9-1500": wn9_1500}


def variations(sized: dict[str, object], small: bool) -> dict[str, dict[str, object]]:
    """Name -> settings: the sized ones, the fixed defaults, and one-change variations."""
    out: dict[str, dict[str, object]] = {"sized": dict(sized), "fixed defaults": {**sized, **FIXED}}
    d, dr, lr = int(sized["dim"]), int(sized["relation_dim"]), float(sized["lr"])  # type: ignore[arg-type]
    out[f"d {2 * d}, d_r {2 * dr}"] = {**sized, "dim": 2 * d, "relation_dim": 2 * dr}
    out[f"lr {lr / 3:.4g}"] = {**sized, "lr": round(lr / 3, 5)}
    if small:
        out[f"d {d // 2}, d_r {dr // 2}"] = {**sized, "dim": d // 2, "relation_dim": dr // 2}
        out[f"lr {lr * 3:.4g}"] = {**sized, "lr": round(lr * 3, 5)}
        other = 128 if sized["batch_size"] == 512 else 512
        out[f"batch {other}"] = {**sized, "batch_size": other}
    return out


def flags(settings: dict[str, object]) -> list[str]:
    out: list[str] = []
    for k, v in settings.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def one_run(graph: str, dataset: str, name: str, settings: dict[str, object], budget: float, out_root: Path) -> dict:
    bundle = out_root / graph / name.replace(" ", "_").replace(",", "")
    run = {**settings, "max_minutes": budget}
    cmd = [sys.executable, "-m", "model", "train", "--dataset", dataset, "--out", str(bundle), "--overwrite",
           "--seed", "0", "--patience", "5", "--threads", "1", "--quiet", "--no-extras", "--report-test", *flags(run)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"graph": graph, "config": name, "error": proc.stderr[-1500:], "command": " ".join(cmd[1:])}
    m = json.loads((bundle / "manifest.json").read_text())
    tr = m["training"]
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    result = {
        "graph": graph, "config": name, "settings": settings, "budget_min": budget,
        "valid_mrr": m["metrics"]["valid"]["mrr"], "test_mrr": m["metrics"]["test"]["mrr"],
        "epochs_run": tr["epochs_run"], "best_epoch": tr["best_epoch"], "stopped_by": tr["stopped_by"],
        "wall_s": round(time.monotonic() - t0, 1), "bundle_mb": round(size / 1e6, 1),
        "command": " ".join(cmd[1:]),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "command"}), flush=True)
    return result


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"Sizing benchmark, {meta['date']}, {meta['machine']}; budget cap {meta['max_budget']} min; command: `{meta['command']}`", "",
             "| graph | entities / relations / train | budget | sized: valid / test MRR | searched best (valid) | its valid / test MRR | sized - best (valid) | fixed defaults: valid / test MRR | sized bundle MB (fixed) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in meta["graphs"]:
        rs = [r for r in results if r["graph"] == g["name"] and "error" not in r]
        if not rs:
            continue
        sized = next(r for r in rs if r["config"] == "sized")
        fixed = next((r for r in rs if r["config"] == "fixed defaults"), None)
        best = max(rs, key=lambda r: r["valid_mrr"])
        lines.append(
            f"| {g['name']} | {g['entities']:,} / {g['relations']} / {g['train']:,} | {sized['budget_min']} min | "
            f"{sized['valid_mrr']:.4f} / {sized['test_mrr']:.4f} | {best['config']} | {best['valid_mrr']:.4f} / {best['test_mrr']:.4f} | "
            f"{sized['valid_mrr'] - best['valid_mrr']:+.4f} | "
            + (f"{fixed['valid_mrr']:.4f} / {fixed['test_mrr']:.4f} | {sized['bundle_mb']} ({fixed['bundle_mb']}) |" if fixed else "- | - |")
        )
    lines += ["", "Every configuration:", "", "| graph | config | valid MRR | test MRR | epochs (best) | stopped by | MB |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['graph']} | {r['config']} | error | | | | |")
        else:
            lines.append(f"| {r['graph']} | {r['config']} | {r['valid_mrr']:.4f} | {r['test_mrr']:.4f} | {r['epochs_run']} ({r['best_epoch']}) | {r['stopped_by']} | {r['bundle_mb']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", default="fb-1k,wn9-1500,wn9-img,db15k,fb15k-237")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--max-budget", type=float, default=10.0, help="cap on the per-configuration time budget, minutes")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "sizing")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "sizing")
    args = ap.parse_args()
    jobs = []
    graphs = []
    for g in args.graphs.split(","):
        if g in CUTS:
            src = load_dataset({"fb-1k": "fb15k-237", "wn9-1500": "wn9-img"}[g])
            used, sub = CUTS[g](src)
            dataset = str(write_cut(src, used, sub, args.out / "data" / g, g))
        else:
            dataset = g
        ds = load_dataset(dataset, with_features=False)
        n, r, t = ds.num_entities, ds.num_relations, len(ds.train)
        graphs.append({"name": g, "entities": n, "relations": r, "train": t})
        sized = sized_settings(n, r, t)
        budget = min(float(sized.pop("max_minutes")), args.max_budget)  # type: ignore[arg-type]
        for name, settings in variations(sized, t < SMALL_GRAPH_TRIPLES).items():
            jobs.append((g, dataset, name, settings, budget))
    print(f"{len(jobs)} runs on {args.parallel} workers", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda j: one_run(*j, args.out), jobs))
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores, 1 thread per run, {args.parallel} runs at a time",
            "max_budget": args.max_budget, "graphs": graphs, "command": "python bench/sizing.py " + " ".join(sys.argv[1:])}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    md = markdown(results, meta)
    args.results.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
