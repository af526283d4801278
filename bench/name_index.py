"""Cost of name lookups: the trigram NameIndex (model.kg.names) against the linear scans it
replaced (difflib over every name; a Python substring scan), at the shipped vocabulary's size
and at 1M names.

    python bench/name_index.py                       # 14,505 real names and 1M synthetic ones
    python bench/name_index.py --sizes 14505 --queries 200

The 1M names are the real FB15k-237 names with a distinct numeric suffix (so they share the
real names' trigram statistics). Queries: unknown names (a real name with one character
dropped: the suggestion path) and /entities searches (a real name's first 3-8 characters).
Prints build seconds, then per-query milliseconds (p50 / p99) for each method.
"""

from __future__ import annotations

import argparse
import difflib
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.bundle.format import load_bundle  # noqa: E402
from model.kg.names import NameIndex  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "default")
    ap.add_argument("--sizes", default="14505,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--baseline-queries", type=int, default=5, help="difflib / scan queries at sizes above 100k (slow)")
    args = ap.parse_args(argv)
    real = load_bundle(args.bundle, verify=False).vocab.entity_names
    rng = random.Random(0)
    print("| names | build s | method | unknown name p50 ms | p99 ms | search p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.sizes.split(",")):
        names = real[:n] if n <= len(real) else [f"{real[i % len(real)]} {i // len(real)}" if i >= len(real) else real[i] for i in range(n)]
        t0 = time.perf_counter()
        index = NameIndex(names)
        build = time.perf_counter() - t0
        picks = [rng.choice(real) for _ in range(args.queries)]
        typos = [p[:j] + p[j + 1:] for p in picks if len(p) > 3 for j in [rng.randrange(1, len(p) - 1)]]
        prefixes = [p[: rng.randint(3, 8)].lower() for p in picks]
        c50, c99 = timed(index.close, typos)
        s50, s99 = timed(lambda q: index.search(q, 10), prefixes)
        print(f"| {n:,} | {build:.1f} | NameIndex | {c50:.2f} | {c99:.2f} | {s50:.2f} | {s99:.2f} |")
        lower = [x.lower() for x in names]
        k = args.queries if n <= 100_000 else args.baseline_queries
        d50, d99 = timed(lambda q: difflib.get_close_matches(q.lower(), lower, n=5, cutoff=0.6), typos[:k])
        l50, l99 = timed(lambda q: linear_search(lower, q, 10), prefixes[:k])
        print(f"| {n:,} | - | linear (difflib, scan; {k} queries) | {d50:.2f} | {d99:.2f} | {l50:.2f} | {l99:.2f} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
