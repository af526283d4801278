"""The serving benchmarks' queries: test triples of a bundle, tail and head prediction
alternating, known facts filtered. Nothing of the service is imported until called, so a
benchmark can pick which checkout's `service` to import first (bench/retrieval_profile.py)."""

from __future__ import annotations

from typing import Any

import numpy as np


def make_queries(p: Any, n: int, seed: int = 0, k: int = 10) -> list:
    """n Query objects for the Predictor p (the same ones for the same bundle and seed)."""
    from service.query import Query

    test = p.bundle.triples["test"]
    rng = np.random.default_rng(seed)
    rows = test[rng.choice(len(test), min(n, len(test)), replace=False)]
    return [
        Query(entity=int(h if i % 2 == 0 else t), relation=int(r), direction="tail" if i % 2 == 0 else "head", k=k, filter_known=True)
        for i, (h, r, t) in enumerate(rows.tolist())
    ]
