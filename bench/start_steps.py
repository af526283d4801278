"""Where a server start goes, step by step: the parts of `Predictor.load` timed one by one, with
the process's resident memory after each (a bundle whose index and tables were saved by an
earlier start, so this is a later start).

    python bench/start_steps.py bench/.cache/scaled-1000000          # the 1M bundle
    python bench/start_steps.py artifacts/default --threads 1

Prints one line per step: seconds, then RSS in MiB.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from model.bundle.format import load_bundle, manifest_config, read_manifest  # noqa: E402
from service import tables as stored_tables  # noqa: E402
from service.engine import Predictor  # noqa: E402
from service.index import INDEX_DIR, CandidateIndex, resolve_kind  # noqa: E402


def rss_mib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = time.monotonic()

    def step(name: str) -> None:
        nonlocal t
        now = time.monotonic()
        print(f"{name:46s} {now - t:6.2f} s   RSS {rss_mib():6d} MiB", flush=True)
        t = now

    step("imports (torch, FAISS, the service)")
    manifest = read_manifest(args.bundle)
    cfg = manifest_config(args.bundle, manifest)
    n, folder = cfg.num_entities, args.bundle / INDEX_DIR
    kind = resolve_kind("auto", n)
    dtype = stored_tables.resolve_dtype("auto", n)
    saved = stored_tables.find(folder, manifest["model_fingerprint"], cfg.branches, (n, cfg.dim), dtype) if kind != "exact" else None
    b = load_bundle(args.bundle, entity_rows=saved is None)  # as Predictor.load: no entity rows when saved tables exist
    step("load and verify the bundle" + (" (without its entity rows)" if saved is not None else ""))
    tables = stored_tables.load(folder, saved) if saved is not None else None
    step("saved entity tables (read, MAC)" if tables is not None else "no saved tables")
    index = CandidateIndex.load(folder, kind, b.fingerprint, [b.model.cfg.dim] * len(b.model.branches), n) if kind != "exact" else None
    step(f"saved {kind} index (read, MAC, parse)" if index is not None else "no saved index")
    b.known  # noqa: B018
    step("known-answer index")
    b.vocab.name_index  # noqa: B018
    step("name index (suggestions, /entities)")
    b.vocab.entities_named("")
    step("exact-name order")
    if tables is not None:
        p = Predictor(b, index, tables, candidates=200, load_seconds=0)
        step("engine (relation matrices, views, name resolver)")
        if index is not None and p.num_entities > 200_000:
            p._tail_sample()
            p._strata()
            step("normaliser samples and strata")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
