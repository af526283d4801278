"""Learning curves: validation MRR against epochs and against training wall time, one line per run.

Reads the training history that every bundle's manifest keeps (per epoch: the validation MRR on
the early-stopping subset of the validation split, and the training seconds so far, validation
excluded) from bundle directories or from bench/quality.py result files, and draws one PNG: a
row per dataset (each with its own MRR scale), two panels per row (against epochs, against
minutes).

    python bench/learning_curves.py --out docs/learning-curves.png \\
        "IMF, FB15k-237=artifacts/default" bench/results/quality-db15k.json \\
        bench/results/quality-wn9-img.json --runs imf,structure-only

An argument is LABEL=BUNDLE_DIR, or a bench/quality.py results JSON (each of its runs becomes
a line, labelled "run, dataset"). Prints each curve as a table too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curves_from(arg: str, runs: set[str] | None = None) -> list[tuple[str, list[dict], str, str]]:
    """(label, history, machine note, dataset) for one command-line argument; `runs` keeps only
    those runs of a results JSON."""
    if "=" in arg and not arg.endswith(".json"):
        label, path = arg.split("=", 1)
        manifest = json.loads((Path(path) / "manifest.json").read_text())
        tr = manifest["training"]
        dataset = str((manifest.get("dataset") or {}).get("name") or tr.get("dataset", ""))
        return [(label, tr["history"], f"{tr.get('device', 'cpu')}, threads {tr.get('threads') or 'default'}", dataset)]
    data = json.loads(Path(arg).read_text())
    meta = data["meta"]
    return [
        (f"{r['run']}, {meta['dataset']}", r["history"], meta.get("device_name", ""), str(meta["dataset"]))
        for r in data["results"]
        if "history" in r and (runs is None or r["run"] in runs)
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--out", type=Path, default=Path("docs/learning-curves.png"))
    ap.add_argument("--title", default="Validation MRR (filtered, early-stopping subset of valid) while training")
    ap.add_argument("--runs", default=None, help="comma list: only these runs of the results JSONs (e.g. imf,structure-only)")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = set(args.runs.split(",")) if args.runs else None
    curves = [c for s in args.sources for c in curves_from(s, runs)]
    datasets = list(dict.fromkeys(c[3] for c in curves))  # in the order given
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.2 * len(datasets)), squeeze=False)
    colors: dict[str, str] = {}
    for label, hist, machine, dataset in curves:
        ax_e, ax_t = axes[datasets.index(dataset)]
        pts = [h for h in hist if "valid_mrr" in h]
        epochs = [h["epoch"] for h in pts]
        minutes = [h.get("train_s", 0.0) / 60 for h in pts]
        mrr = [h["valid_mrr"] for h in pts]
        # one colour per run name across the rows ("imf, db15k" and "imf, wn9-img" alike)
        color = colors.setdefault(label.split(",")[0], f"C{len(colors)}")
        ax_e.plot(epochs, mrr, marker="o", ms=3, color=color, label=label)
        ax_t.plot(minutes, mrr, marker="o", ms=3, color=color, label=label)
        print(f"# {label} ({machine})")
        print("| epoch | training minutes | valid MRR |\n|---|---|---|")
        for e, m, v in zip(epochs, minutes, mrr):
            print(f"| {e} | {m:.1f} | {v:.4f} |")
    for dataset, (ax_e, ax_t) in zip(datasets, axes):
        ax_e.set_xlabel("epoch")
        ax_t.set_xlabel("training wall time (minutes, validation excluded)")
        for ax in (ax_e, ax_t):
            ax.set_ylabel(f"validation MRR, {dataset}")
            ax.grid(alpha=0.3)
        ax_t.legend(fontsize=8, loc="lower right")
    fig.suptitle(args.title, fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(args.out)  # written whole, then renamed
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
