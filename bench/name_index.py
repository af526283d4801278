"""Cost of name lookups: the trigram NameIndex (model.kg.names) against the linear scans it
replaced (difflib over every name; a Python substring scan), at the shipped vocabulary's size
and at 1M names.

    python bench/name_index.py                       # 14,505 real names and 1M synthetic ones
    python bench/name_index.py --sizes 14505 --queries 200

The index is built as the service builds it: over the names, the ids and the training degrees.
The 1M names are the real FB15k-237 names with a distinct numeric suffix (so they share the
real names' trigram statistics), their ids the real ids with a "~k" suffix, their weights the
real ones repeated. Queries: unknown names (a real name with one character dropped: the
suggestion path) and /entities searches, for prefixes (a real name's first 3-8 characters) and
for substrings (3-6 characters from inside a real name: the trigram intersection).

Prints build seconds and the resident memory the index added (MB, after a garbage collection
and with glibc's free heap pages handed back before and after, as the index does; Linux only,
"-" elsewhere), then per-query milliseconds (p50 / p99) for each method.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.bundle.format import load_bundle  # noqa: E402
from model.kg.names import NameIndex, release_free_memory  # noqa: E402


def linear_search(lower: list[str], q: str, limit: int) -> list[int]:
    """The old /entities scan (tiers, without the degree order: the cost is the scan)."""
    out = []
    for i, low in enumerate(lower):
        if low == q or low.startswith(q) or q in low:
            out.append(i)
    return out[:limit]


def timed(fn, queries: list[str]) -> tuple[float, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def resident_mb() -> float | None:
    """This process's resident memory (VmRSS), MB; None where /proc is not there."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "default")
    ap.add_argument("--sizes", default="14505,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--baseline-queries", type=int, default=5, help="difflib / scan queries at sizes above 100k (slow)")
    args = ap.parse_args(argv)
    vocab = load_bundle(args.bundle, verify=False).vocab
    real, real_ids, real_weights = vocab.entity_names, vocab.entity_ids, np.asarray(vocab.entity_weights)
    rng = random.Random(0)
    print("| names | build s | build MB | method | unknown name p50 ms | p99 ms | search p50 ms | p99 ms | substring p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.sizes.split(",")):
        m = len(real)
        names = real[:n] if n <= m else [real[i] if i < m else f"{real[i % m]} {i // m}" for i in range(n)]
        ids = real_ids[:n] if n <= m else [real_ids[i] if i < m else f"{real_ids[i % m]}~{i // m}" for i in range(n)]
        weights = np.resize(real_weights, n)
        gc.collect()
        release_free_memory()  # as the index does after its build: count its arrays, not the heap's holes
        before = resident_mb()
        t0 = time.perf_counter()
        index = NameIndex(names, ids, weights)
        build = time.perf_counter() - t0
        gc.collect()
        after = resident_mb()
        grown = f"{after - before:.0f}" if before is not None and after is not None else "-"
        picks = [rng.choice(real) for _ in range(args.queries)]
        typos = [p[:j] + p[j + 1:] for p in picks if len(p) > 3 for j in [rng.randrange(1, len(p) - 1)]]
        prefixes = [p[: rng.randint(3, 8)].lower() for p in picks]
        inner = [p.lower()[a:a + rng.randint(3, 6)] for p in picks if len(p) > 3 for a in [rng.randrange(0, len(p) - 3)]]
        search = index.search
        c50, c99 = timed(index.close, typos)
        s50, s99 = timed(lambda q, search=search: search(q, 10), prefixes)
        i50, i99 = timed(lambda q, search=search: search(q, 10), inner)
        print(f"| {n:,} | {build:.1f} | {grown} | NameIndex | {c50:.2f} | {c99:.2f} | {s50:.2f} | {s99:.2f} | {i50:.2f} | {i99:.2f} |")
        index = search = None  # let it go before the baselines' lower-cased copies
        lower = [x.lower() for x in names]
        k = args.queries if n <= 100_000 else args.baseline_queries
        d50, d99 = timed(lambda q, lower=lower: difflib.get_close_matches(q.lower(), lower, n=5, cutoff=0.6), typos[:k])
        l50, l99 = timed(lambda q, lower=lower: linear_search(lower, q, 10), prefixes[:k])
        j50, j99 = timed(lambda q, lower=lower: linear_search(lower, q, 10), inner[:k])
        print(f"| {n:,} | - | - | linear (difflib, scan; {k} queries) | {d50:.2f} | {d99:.2f} | {l50:.2f} | {l99:.2f} | {j50:.2f} | {j99:.2f} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
