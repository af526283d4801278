"""Calibration on the test split, before and after: log-loss, Brier score, ECE and a
reliability diagram of a bundle's fused scores (raw) and its calibrated probabilities.

    python bench/calibration.py artifacts/default --png docs/calibration.png --json bench/results/calibration.json

Samples as model.bundle.calibration fits them, on test instead of valid: the top CANDIDATES answers
of every test query (both directions) not already known from train + valid, labelled 1 when
the triple is a test triple. The calibration itself was fitted on the validation split only
(`imf bundle extras`); this is the one read of the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.bundle.format import load_bundle  # noqa: E402
from model.bundle.calibration import calibration_metrics, collect_samples, relation_families  # noqa: E402
from model.kg.triples import AnswerIndex  # noqa: E402


def measure(bundle_path: Path) -> dict:
    b = load_bundle(bundle_path)
    if b.calibration is None:
        raise SystemExit(f"{bundle_path}: no calibration (run: imf bundle extras {bundle_path})")
    n, r = b.num_entities, b.num_relations
    fam = relation_families(b.triples["train"], r)
    before = AnswerIndex(np.concatenate([b.triples["train"], b.triples["valid"]]), n, r)
    s = collect_samples(b.model, b.triples["test"], before, fam)
    raw = calibration_metrics(np.exp(s.log_p), s.label)
    cal = calibration_metrics(b.calibration._apply(s.log_p, s.family), s.label)
    return {"bundle": str(bundle_path), "model": b.fingerprint[:12], "method": b.calibration.method, "raw": raw, "calibrated": cal}


def plot(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfect")
    for key, color, label in (("raw", "#e15759", "raw score p"), ("calibrated", "#4e79a7", f"calibrated ({res['method']})")):
        c = res[key]["curve"]
        ax.plot([b["predicted"] for b in c], [b["observed"] for b in c], marker="o", color=color, label=f"{label}: ECE {res[key]['ece']:.4f}")
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed share of held-out facts")
    ax.set_title(f"Reliability on the FB15k-237 test split\n(top-20 new answers per query, model {res['model']})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    res = measure(args.bundle)
    for key in ("raw", "calibrated"):
        m = res[key]
        print(f"{key:11s} log-loss {m['log_loss']:.4f}  Brier {m['brier']:.4f}  ECE {m['ece']:.4f}  ({m['samples']} samples, {m['positives']} true)")
    if args.png:
        plot(res, args.png)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
