"""Where a query's time goes on the retrieval path (an index, K' candidates, the normaliser
estimate above 200k entities): the engine's steps timed over the same queries, 1 torch + 1
FAISS thread, after an untimed warm-up pass.

    python bench/retrieval_profile.py bench/.cache/scaled-1000000
    python bench/retrieval_profile.py bench/.cache/scaled-1000000 --code /tmp/base   # another checkout's engine

--code puts another checkout first on the import path (its service/ and model/), so two versions
of the engine can be profiled on the same bundle one after the other; run them in turns, more
than once, on a shared machine. Prints p50 and mean per query, then the mean of each step per
query (steps nest: `_retrieve` holds the searches and the exact re-ranking, `search_part` the
FAISS calls; `_log_normalizers` is the estimate; the rest of a query is the query vectors,
the candidates' exact logits, the fusion and the top k).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--index", default="auto", help="index type (default auto: ivfpq from 200k entities)")
    ap.add_argument("--code", type=Path, default=REPO, help="the checkout whose engine to profile (default: this one)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from bench.queries import make_queries  # imports no service code until called

    sys.path.insert(0, str(args.code.resolve()))  # the engine profiled: this checkout's or --code's
    import faiss
    import numpy as np
    import torch

    from service.engine import Predictor

    print(f"engine imported from {Path(sys.modules['service.engine'].__file__).resolve()}")

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    p = Predictor.load(args.bundle, candidates=200, index_kind=args.index)
    if p.index is None:
        raise SystemExit(f"{args.bundle}: no index at this size (exhaustive scoring); nothing to profile")
    queries = make_queries(p, args.queries)
    for q in queries:  # warm-up: pages of the tables and the index resident
        p.predict(q)

    spent: dict[str, float] = {}

    def timed(obj: Any, name: str) -> None:
        f: Callable[..., Any] = getattr(obj, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

        setattr(obj, name, wrapper)

    for name in ("_queries", "_retrieve", "_log_normalizers"):
        timed(p, name)
    timed(p.index, "search_part")
    times = []
    for q in queries:
        t0 = time.perf_counter()
        p.predict(q)
        times.append(time.perf_counter() - t0)
    n = len(queries)
    print(f"code: {args.code.resolve()}  bundle: {args.bundle}  {p.num_entities:,} entities, {n} queries")
    print(f"per query: p50 {1000 * np.percentile(times, 50):.2f} ms, mean {1000 * np.mean(times):.2f} ms")
    for name, total in spent.items():
        print(f"  {name}: {1000 * total / n:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
