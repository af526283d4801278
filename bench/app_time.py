"""Application time of a request: the app called in-process through ASGI, with no network, no
HTTP parsing and no client, so what is left is the middleware stack, the route, the cache and
the engine. Prints one JSON object: p50 / p99 of GET /health, POST /predict cache misses and
the same requests again (cache hits), one at a time.

    python bench/app_time.py --bundle artifacts/default [--requests 300]

It imports `service` from the working directory, so bench/serve_bench.py runs it in another
checkout too (--baseline-repo) to compare the two apps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path.cwd()))  # the checkout whose app is measured

from model.bundle.format import load_bundle  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402


def scope(method: str, path: str, body: bytes) -> dict:
    headers = [(b"host", b"127.0.0.1:8000")]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}


async def measure(bundle: Path, n: int) -> dict:
    app = create_app(Settings(bundle=bundle, log_level="warning", save_index=False))
    b = load_bundle(bundle, verify=False)
    rows = b.triples["test"][np.random.default_rng(2).choice(len(b.triples["test"]), n, replace=False)].tolist()
    bodies = [json.dumps({"head": b.vocab.entity_ids[h if i % 2 == 0 else t], "relation": b.vocab.relation_ids[r], "k": 10,
                          "direction": "tail" if i % 2 == 0 else "head"}).encode() for i, (h, r, t) in enumerate(rows)]

    async def call(method: str, path: str, body: bytes = b"") -> int:
        status = 0

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope(method, path, body), receive, send)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status}")
        return status

    def pct(v: list[float], q: float) -> float:
        return float(np.percentile(np.asarray(v), q)) * 1000

    async with app.router.lifespan_context(app):
        while getattr(app.state, "imf", None) is None or app.state.imf.predictor is None:
            await asyncio.sleep(0.05)
        for _ in range(100):
            await call("GET", "/health")
        times: dict[str, list[float]] = {"health": [], "miss": [], "hit": []}
        for kind in ("health", "miss", "hit"):
            for body in bodies:
                t0 = time.perf_counter()
                await (call("GET", "/health") if kind == "health" else call("POST", "/predict", body))
                times[kind].append(time.perf_counter() - t0)
                if kind == "miss":
                    await asyncio.sleep(0)  # let the cache write after the response run
    return {f"{k}_{q}_ms": pct(v, q) for k, v in times.items() for q in (50, 99)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    print(json.dumps(asyncio.run(measure(args.bundle.resolve(), args.requests))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
