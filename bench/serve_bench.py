"""Serving benchmark: candidate recall, engine latency against exhaustive scoring, and HTTP
latency / throughput of the real server (cache miss and hit, 1 and 32 clients), start-up time
and resident memory.

    python bench/serve_bench.py --bundle artifacts/default --name fb15k-237
    python bench/serve_bench.py --scale-from artifacts/default --entities 1000000 --name scaled-1m --engine-index auto
    python bench/serve_bench.py --synthetic 1000000 --name synthetic-1m --engine-index auto

(bench/synthetic.py says what the two kinds of large bundle are, and why candidate recall means
something on the scaled one only.)

Phases (same queries throughout: test triples, tail and head prediction alternating):
1. engine, in-process, 1 torch + 1 FAISS thread: start-up (first start builds the FAISS index,
   a later start loads it), recall@10 of retrieve-then-rescore against exhaustive full-model
   scoring (the same filtered top 10), for K' in a sweep, and the
   per-query latency of both paths, interleaved query by query (exhaustive = what the reference
   implementation does), and for IVF indexes an nprobe sweep;
2. app time: bench/app_time.py, the app called in-process through ASGI (no network, no client):
   GET /health, /predict misses and hits, one at a time;
3. HTTP, the real server process (`python -m service`), default settings, in-process cache:
   time to /ready, resident memory, 100 warm-up requests (validation triples), GET /health,
   then p50/p99 latency and requests/s for cache misses and cache hits with 1 client and with
   32 concurrent clients (httpx, on the same 2 cores). With --baseline-repo (another checkout)
   and --compare-unbatched, those servers run beside this one and every round gives each of
   them the same queries in turn; their answers are compared with this server's.

Prints a markdown table and writes bench/results/serve-NAME.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import httpx  # noqa: E402
import torch  # noqa: E402

from model.evaluation.predict import known_mask, top_k_with_filter  # noqa: E402
from service.engine import Predictor  # noqa: E402
from service.index import EXHAUSTIVE_MAX_ENTITIES  # noqa: E402
from service.query import Query  # noqa: E402
from bench.queries import make_queries  # noqa: E402
from tests.helpers import free_port, wait_ready  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def recall(p: Predictor, queries: list[Query], exact: list[set[int]]) -> tuple[float, float]:
    """Recall@k of p.predict against the exhaustive answers, and its p50 latency (ms)."""
    hits = 0
    times = []
    for q, e in zip(queries, exact):
        t0 = time.perf_counter()
        hits += len(e & {x.entity for x in p.predict(q)})
        times.append(time.perf_counter() - t0)
    return hits / max(1, sum(len(e) for e in exact)), 1000 * pct(times, 50)


def engine_phase(bundle: Path, n_queries: int, candidates: int, index_kind: str, *, settings: dict | None = None, keep_index: bool = False,
                 refine_sweep: tuple[int, ...] = (), calibration_from: Path | None = None) -> dict:
    """settings: nprobe / refine_factor for Predictor.load (service defaults when absent);
    keep_index: reuse a saved index (no first-start measurement, for quick iterations)."""
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    settings = settings or {}
    index_dir = bundle / "index"
    first_start = float("nan")
    if not keep_index:
        for f in index_dir.glob("*") if index_dir.is_dir() else []:
            f.unlink()
        t0 = time.monotonic()
        p = Predictor.load(bundle, candidates=candidates, index_kind=index_kind, **settings)
        first_start = time.monotonic() - t0
        del p
        gc.collect()
    t0 = time.monotonic()
    p = Predictor.load(bundle, candidates=candidates, index_kind=index_kind, **settings)
    later_start = time.monotonic() - t0
    rss_engine, rss_peak = rss_mb(os.getpid()), rss_mb(os.getpid(), "VmHWM")  # the peak includes the first start's, when measured
    queries = make_queries(p, n_queries)
    # Warm-up, untimed: one pass of both paths over every query. Freshly loaded tables and index
    # pages are slow on first touch on this VM (the first pass had a p99 of 116 ms); a serving
    # process in its steady state has them resident.
    # Above EXHAUSTIVE_MAX_ENTITIES only the fast path is warmed: one exhaustive or reference
    # pass over a million float16 rows takes a second and touches every table page anyway.
    large = p.num_entities > EXHAUSTIVE_MAX_ENTITIES
    for q in queries:
        if not large:
            p.predict_exhaustive(q)
            p.predict_reference(q)
        p.predict(q)
    # The paths answer each query back to back (rotating which goes first), so the ratios are
    # taken in the same moments of a shared, noisy machine rather than in separate phases.
    # "reference" is the model's own scoring, as the engine did it before anything was
    # precomputed (Predictor.predict_reference); its answers are the ones to keep.
    t_exh: list[float] = []
    t_fast: list[float] = []
    t_ref: list[float] = []
    exact = []
    differ, worst = 0, 0.0
    paths = ("exhaustive", "fast", "reference")
    for i, q in enumerate(queries):
        for path in paths[i % 3:] + paths[:i % 3]:
            t0 = time.perf_counter()
            if path == "exhaustive":
                got = p.predict_exhaustive(q)
                t_exh.append(time.perf_counter() - t0)
                exact.append({x.entity for x in got})
            elif path == "fast":
                p.predict(q)
                t_fast.append(time.perf_counter() - t0)
            else:
                ref = p.predict_reference(q)
                t_ref.append(time.perf_counter() - t0)
        if [(x.entity, x.rank) for x in got] != [(x.entity, x.rank) for x in ref]:
            differ += 1
        worst = max([worst, *(abs(a.score - b.score) / max(b.score, 1e-300) for a, b in zip(got, ref))])
    sweep = {}
    for kp in sorted({50, 100, candidates, 2 * candidates}):
        variant = Predictor(p.bundle, p.index, p.tables, candidates=kp, load_seconds=0)
        sweep[f"union@{kp}"] = recall(variant, queries, exact)[0]  # the key of earlier results files
    nprobe_sweep = {}
    if p.index is not None and p.index.kind in ("ivf", "ivfpq"):  # the IVF speed / recall trade-off
        default = p.index.nprobe
        for nprobe in (32, 64, 128, 256):
            p.index.nprobe = nprobe
            r, p50 = recall(p, queries, exact)
            nprobe_sweep[str(nprobe)] = {"recall_at_10": r, "p50_ms": p50}
        p.index.nprobe = default
    refine = {}
    if p.index is not None and p.index.approximate_scores:  # PQ codes: how deep the exact re-ranking goes
        default = p.index.refine_factor
        for factor in refine_sweep:
            p.index.refine_factor = factor
            r, p50 = recall(p, queries, exact)
            refine[str(factor)] = {"recall_at_10": r, "p50_ms": p50}
        p.index.refine_factor = default
    norm = normaliser_phase(p, queries, calibration_from) if p.index is not None and p.num_entities > EXHAUSTIVE_MAX_ENTITIES and p.model.cfg.output == "softmax" else None
    out = {
        "entities": p.num_entities,
        "branches": p.branches,
        "index": p.index.kind if p.index is not None else "exact",
        "candidates_default": candidates,
        "first_start_s": first_start,
        "later_start_s": later_start,
        "recall_at_10": sweep,
        "engine_p50_ms": 1000 * pct(t_fast, 50),
        "engine_p99_ms": 1000 * pct(t_fast, 99),
        "exhaustive_p50_ms": 1000 * pct(t_exh, 50),
        "exhaustive_p99_ms": 1000 * pct(t_exh, 99),
        "reference_p50_ms": 1000 * pct(t_ref, 50),
        "reference_p99_ms": 1000 * pct(t_ref, 99),
        "exhaustive_vs_reference_differ": differ,
        "exhaustive_vs_reference_max_rel_score": worst,
        "ablation": ablation(p, queries) if p.num_entities <= EXHAUSTIVE_MAX_ENTITIES else None,
        "speedup_p50": pct(t_exh, 50) / pct(t_fast, 50),
        "nprobe": p.index.nprobe if p.index is not None else None,
        "refine_factor": p.index.refine_factor if p.index is not None else None,
        "nprobe_sweep": nprobe_sweep,
        "refine_sweep": refine,
        "normaliser": norm,
        "index_bytes": p.index.nbytes if p.index is not None else 0,
        "table_bytes": sum(t.numel() * t.element_size() for t in p.tables.values()),
        "rss_after_load_mb": rss_engine,
        "rss_peak_load_mb": rss_peak,
        "queries": len(queries),
    }
    del p
    gc.collect()
    return out


@torch.no_grad()
def normaliser_phase(p: Predictor, queries: list[Query], calibration_from: Path | None) -> dict:
    """Above EXHAUSTIVE_MAX_ENTITIES the engine cannot afford each branch's exact softmax
    normaliser per query. For the engine's own candidates of every query, the fused scores with
    the exact normaliser (computed here over all N entities) against (a) the candidates' own sum
    and (b) the engine's estimate (Predictor._log_normalizers): queries whose filtered top k
    differs in order or in membership, the relative error of the fused score of the top k, and
    the absolute error of its calibrated probability (the bundle's calibration, else that of
    `calibration_from`)."""
    from model.bundle.format import load_bundle

    cal = p.bundle.calibration
    if cal is None and calibration_from is not None:
        cal = load_bundle(calibration_from, verify=False).calibration
    tables = p.tables
    rows = {b: t for b, t in tables.items()}
    stats: dict[str, dict[str, list[float]]] = {m: {"order": [], "members": [], "rel": [], "cal": [], "logz": []} for m in ("candidates", "estimate")}
    t_est: list[float] = []
    for q in queries:
        rel = p._rel(q)
        qv, w = p._queries([q.entity], [rel], tables)
        known = [p._known_rows(q)]
        ids, heads = p._retrieve([q], qv, known, len(tables[p.branches[0]]))
        valid = ids >= 0
        cand = torch.from_numpy(np.where(valid, ids, 0))
        logits = {b: torch.einsum("bd,bkd->bk", qv[b], rows[b][cand].float()) for b in p.branches}  # float32 from any stored type
        exact_z = p.model.log_normalizers(qv, tables)
        t0 = time.perf_counter()
        est_z = p._log_normalizers(qv, ids, valid, logits, heads)
        t_est.append(time.perf_counter() - t0)
        cand_z = {b: torch.logsumexp(v.double(), dim=1) for b, v in logits.items()}
        ci = ids[0][valid[0]]
        is_known = np.isin(ci, known[0])

        def ranked(z: dict | None) -> tuple[list[int], np.ndarray]:
            pv = p.model.fuse(logits, w, z)[0].numpy()[valid[0]]
            top = top_k_with_filter(pv, is_known, q.k, filter_known=q.filter_known, ids=ci)
            return [int(ci[t.entity]) for t in top], pv

        ref, p_ref = ranked(exact_z)
        pos = {int(e): i for i, e in enumerate(ci)}
        for name, z in (("candidates", cand_z), ("estimate", est_z)):
            got, pv = ranked(z)
            s = stats[name]
            s["order"].append(float(got != ref))
            s["members"].append(float(set(got) != set(ref)))
            j = np.array([pos[e] for e in ref])
            s["rel"] += (np.abs(pv[j] - p_ref[j]) / p_ref[j]).tolist()
            if cal is not None:
                s["cal"] += np.abs(cal.probability(pv[j], rel) - cal.probability(p_ref[j], rel)).tolist()
            s["logz"] += [float(z[b][0] - exact_z[b][0]) for b in p.branches]
    out: dict = {"queries": len(queries), "estimate_p50_ms": 1000 * pct(t_est, 50), "calibration": cal is not None}
    for name, s in stats.items():
        out[name] = {
            "top_k_order_differs": float(np.mean(s["order"])), "top_k_members_differ": float(np.mean(s["members"])),
            "score_rel_err_mean": float(np.mean(s["rel"])), "score_rel_err_p99": pct(s["rel"], 99), "score_rel_err_max": float(np.max(s["rel"])),
            "calibrated_abs_err_mean": float(np.mean(s["cal"])) if s["cal"] else None, "calibrated_abs_err_max": float(np.max(s["cal"])) if s["cal"] else None,
            "log_z_err_mean": float(np.mean(s["logz"])), "log_z_err_abs_max": float(np.max(np.abs(s["logz"]))),
        }
    return out


@torch.no_grad()
def ablation(p: Predictor, queries: list[Query]) -> dict:
    """What each serving change buys, one query at a time (1 thread), every variant on the same
    query back to back (rotating the order), each ranked by the same rule:

    reference   the model's own eval-mode scoring (IMF.query_vectors, IMF.rescore on (N, d) rows)
    +frozen     + relation matrices and w(r) precomputed (model.network.serving.FrozenIMF)
    +columns    + the tables as contiguous (d, N) copies for the products
    +one_exp    + one exp pass per softmax row (FrozenIMF.score_all): the engine's exhaustive path
    bf16        the same with bfloat16 tables and queries (float32 accumulation), measured only:
                its answers are compared with the float32 ones

    and the per-query cost of scoring B queries together (Predictor.predict_many)."""
    view = p.added.view
    tables, columns = view.tables, view.columns
    columns16 = {b: c.to(torch.bfloat16) for b, c in columns.items()}
    model, frozen = p.model, p.frozen

    def rank(q: Query, scores: torch.Tensor) -> list:
        pv = scores[0].numpy()
        return top_k_with_filter(pv, known_mask(p._known_rows(q), len(pv)), q.k, filter_known=q.filter_known)

    def inputs(q: Query, use_frozen: bool) -> tuple[dict, torch.Tensor]:
        e, r = torch.tensor([q.entity]), torch.tensor([p._rel(q)])
        if use_frozen:
            return frozen.query_vectors(e, r, tables), frozen.decision_weights(r)
        return model.query_vectors(e, r, tables), model.decision_weights(r)

    def reference(q: Query) -> list:
        qv, w = inputs(q, False)
        return rank(q, model.rescore(qv, w, tables, None)[1])

    def plus_frozen(q: Query) -> list:
        qv, w = inputs(q, True)
        return rank(q, model.rescore(qv, w, tables, None)[1])

    def plus_columns(q: Query) -> list:
        qv, w = inputs(q, True)
        return rank(q, model.fuse({b: qv[b] @ columns[b] for b in p.branches}, w))

    def plus_one_exp(q: Query) -> list:
        qv, w = inputs(q, True)
        return rank(q, frozen.score_all(qv, w, columns))

    def bf16(q: Query) -> list:
        qv, w = inputs(q, True)
        return rank(q, frozen.score_all({b: v.to(torch.bfloat16) for b, v in qv.items()}, w, columns16))

    variants = {"reference": reference, "+frozen": plus_frozen, "+columns": plus_columns, "+one_exp": plus_one_exp, "bf16": bf16}
    times: dict[str, list[float]] = {k: [] for k in variants}
    answers: dict[str, list] = {k: [] for k in variants}
    names = list(variants)
    for q in queries[:20]:
        for f in variants.values():
            f(q)
    for i, q in enumerate(queries):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            answers[name].append(variants[name](q))
            times[name].append(time.perf_counter() - t0)

    def same(a: list, b: list) -> int:
        return sum([(x.entity, x.rank) for x in u] == [(x.entity, x.rank) for x in v] for u, v in zip(a, b))

    out: dict = {"p50_ms": {k: 1000 * pct(v, 50) for k, v in times.items()}}
    out["identical_top_k_vs_reference"] = {k: same(answers[k], answers["reference"]) for k in names}
    out["identical_top_k_bf16_vs_float32"] = same(answers["bf16"], answers["+one_exp"])
    out["queries"] = len(queries)
    per_query = {}
    exact = Predictor(p.bundle, None, p.tables, candidates=p.candidates, load_seconds=0)  # the exhaustive path, batched
    for size in (1, 8, 32):
        chunks = [queries[i:i + size] for i in range(0, len(queries) - size + 1, size)]
        if not chunks:
            continue
        exact.predict_many(chunks[0])
        t0 = time.perf_counter()
        for c in chunks:
            exact.predict_many(c)
        per_query[str(size)] = 1000 * (time.perf_counter() - t0) / (len(chunks) * size)
    out["batched_ms_per_query"] = per_query
    return out


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process in MiB: now (VmRSS) or its peak so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(base: str, bodies: list[dict | None], clients: int, answers: dict[int, list] | None = None) -> tuple[list[float], float]:
    """Send every body once to POST /predict (None: GET /health), `clients` at a time;
    latencies (s) and wall time (s). `answers` collects each body's (entity, rank, score) list."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in enumerate(bodies):
        queue.put_nowait(item)
    latencies: list[float] = []
    errors = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while True:
            try:
                i, body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            r = await (http.get("/health") if body is None else http.post("/predict", json=body))
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1
            elif answers is not None and body is not None:
                answers[i] = [(x["entity"], x["rank"], x["score"]) for x in r.json()["predictions"]]

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{errors} requests failed")
    return latencies, wall


def start_server(bundle: Path, env_extra: dict[str, str], repo: Path) -> tuple[subprocess.Popen, str, float, float]:
    """The server of `repo` (this checkout, or another one to compare with) on `bundle`, ready:
    (process, base URL, seconds to /ready, resident MB then)."""
    port = free_port()
    env = {**os.environ, "IMF_PORT": str(port), "IMF_HOST": "127.0.0.1", "IMF_LOG_LEVEL": "warning", **env_extra}
    env.pop("IMF_REDIS_URL", None) if "IMF_REDIS_URL" not in env_extra else None
    t0 = time.monotonic()
    log_file = tempfile.NamedTemporaryFile(prefix="serve-bench-", suffix=".log", delete=False)  # noqa: SIM115 (kept for a failure)
    proc = subprocess.Popen([sys.executable, "-m", "service", str(bundle)], cwd=repo, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, 3600, proc=proc)  # generous: a million-entity bundle loads for minutes
    except BaseException:
        proc.kill()
        tail = Path(log_file.name).read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the server of {repo} did not become ready; its log ({log_file.name}) ends:\n{tail}") from None
    return proc, base, time.monotonic() - t0, rss_mb(proc.pid)


def http_phase(bundle: Path, names: list[dict], warmup: list[dict], servers: dict[str, tuple[Path, dict[str, str]]], rounds: int = 3) -> dict[str, dict]:
    """Every server of `servers` (name -> (checkout, extra IMF_* variables)) started together,
    then measured in turns: `rounds` rounds, each giving every server, one after the other, the
    same fresh slice of `names` (each server has its own cache, so they are misses for each),
    first with 1 client (misses, then the same again: hits), then with 32 clients. Taking turns
    within each round keeps a busy or quiet moment of a shared machine from landing on one
    server only. Latencies are pooled over the rounds; req/s is requests over summed wall time."""
    running: dict[str, tuple[subprocess.Popen, str]] = {}
    out: dict[str, dict] = {}
    try:
        for name, (repo, env) in servers.items():
            proc, base, ready_s, rss_ready = start_server(bundle, env, repo)
            running[name] = (proc, base)
            out[name] = {"time_to_ready_s": ready_s, "rss_ready_mb": rss_ready, "answers": [None] * len(names)}
        for name, (_, base) in running.items():
            # Warm-up with other queries (validation triples), so the measured misses stay misses.
            asyncio.run(load(base, warmup, 1))
            out[name]["health_p50_ms"] = 1000 * pct(asyncio.run(load(base, [None] * 200, 1))[0], 50)
        samples = {n: {c: {"miss": [], "hit": [], "miss_wall": 0.0, "hit_wall": 0.0, "requests": 0} for c in (1, 32)} for n in running}
        per_round = len(names) // rounds
        for r in range(rounds):
            chunk = names[r * per_round:(r + 1) * per_round]
            half = len(chunk) // 2
            for clients, offset, bodies in ((1, r * per_round, chunk[:half]), (32, r * per_round + half, chunk[half:])):
                for name, (_, base) in running.items():
                    got: dict[int, list] = {}
                    miss, wall_miss = asyncio.run(load(base, bodies, clients, got))
                    hit, wall_hit = asyncio.run(load(base, bodies, clients))
                    s = samples[name][clients]
                    s["miss"] += miss
                    s["hit"] += hit
                    s["miss_wall"] += wall_miss
                    s["hit_wall"] += wall_hit
                    s["requests"] += len(bodies)
                    for i, v in got.items():
                        out[name]["answers"][offset + i] = v
        for name, (proc, base) in running.items():
            out[name]["rss_after_load_mb"] = rss_mb(proc.pid)
            out[name]["rss_peak_mb"] = rss_mb(proc.pid, "VmHWM")
            metrics = httpx.get(f"{base}/metrics").text
            found = dict(line.split(" ", 1) for line in metrics.splitlines() if line.startswith(("imf_batch_queries_sum", "imf_batch_queries_count")))
            if found:  # servers with the batcher: queries per scoring pass, over the whole run
                out[name]["mean_batch_queries"] = float(found["imf_batch_queries_sum"]) / max(1.0, float(found["imf_batch_queries_count"]))
            for clients, s in samples[name].items():
                out[name][f"{clients}_clients"] = {
                    "miss_p50_ms": 1000 * pct(s["miss"], 50), "miss_p99_ms": 1000 * pct(s["miss"], 99), "miss_rps": s["requests"] / s["miss_wall"],
                    "hit_p50_ms": 1000 * pct(s["hit"], 50), "hit_p99_ms": 1000 * pct(s["hit"], 99), "hit_rps": s["requests"] / s["hit_wall"],
                    "requests": s["requests"],
                }
    finally:
        for proc, _ in running.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in running.values():
            proc.wait(60)
    return out


def app_time(bundle: Path, repo: Path, requests: int = 300) -> dict:
    """bench/app_time.py run on the app of `repo`: in-process ASGI, no network (p50 / p99 ms)."""
    cmd = [sys.executable, str(REPO / "bench" / "app_time.py"), "--bundle", str(bundle.resolve()), "--requests", str(requests)]
    run = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def compare_answers(new: list[list], old: list[list]) -> dict:
    """Queries whose ranked entities differ, and the largest relative score difference."""
    pairs = [(a, b) for a, b in zip(new, old) if a is not None and b is not None]
    differ = sum([(e, r) for e, r, _ in a] != [(e, r) for e, r, _ in b] for a, b in pairs)
    worst = max((abs(x[2] - y[2]) / max(abs(y[2]), 1e-300) for a, b in pairs for x, y in zip(a, b)), default=0.0)
    return {"queries": len(pairs), "differ": differ, "max_rel_score": worst}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--synthetic", type=int, default=None, help="generate a random-weight bundle with this many entities")
    ap.add_argument("--scale-from", type=Path, default=None, help="copy this trained bundle's entities up to --entities (jittered)")
    ap.add_argument("--entities", type=int, default=1_000_000, help="size of the --scale-from bundle")
    ap.add_argument("--name", required=True)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--http-requests", type=int, default=600, help="distinct queries sent over HTTP (half with 1 client, half with 32)")
    ap.add_argument("--candidates", type=int, default=200, help="K' (the service default is 200)")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--engine-index", default="flat", help="index of the engine phase (recall and speed of retrieval; default flat)")
    ap.add_argument("--http-index", default="auto", help="IMF_INDEX of the server in the HTTP phase (default auto, the service default)")
    ap.add_argument("--baseline-repo", type=Path, default=None, help="another checkout (e.g. `git worktree add /tmp/base REF`) whose server is measured first, in the same run, and whose answers are compared")
    ap.add_argument("--rounds", type=int, default=3, help="HTTP rounds; each gives every server a fresh slice of the queries in turn")
    ap.add_argument("--compare-unbatched", action="store_true", help="also measure this server with IMF_BATCH_SIZE=1 (no batching)")
    ap.add_argument("--nprobe", type=int, default=None, help="IVF lists visited (engine phase and server; default the service's)")
    ap.add_argument("--refine-factor", type=int, default=None, help="PQ: candidates re-ranked exactly, as a multiple of the depth (engine phase and server)")
    ap.add_argument("--refine-sweep", default="", help="comma-separated refine factors to sweep in the engine phase (PQ indexes)")
    ap.add_argument("--keep-index", action="store_true", help="reuse the saved index (no first-start measurement): quick engine iterations")
    args = ap.parse_args()
    if args.synthetic:
        from bench.synthetic import make_synthetic

        bundle = REPO / "bench" / ".cache" / f"synthetic-{args.synthetic}"
        if not (bundle / "manifest.json").exists():
            t0 = time.monotonic()
            make_synthetic(bundle, args.synthetic, overwrite=True)
            print(f"generated {bundle} in {time.monotonic() - t0:.0f}s", flush=True)
    elif args.scale_from:
        from bench.synthetic import make_scaled

        bundle = REPO / "bench" / ".cache" / f"scaled-{args.entities}"
        if not (bundle / "manifest.json").exists():
            t0 = time.monotonic()
            make_scaled(args.scale_from, bundle, args.entities, overwrite=True)
            print(f"generated {bundle} in {time.monotonic() - t0:.0f}s", flush=True)
    else:
        bundle = args.bundle
    if bundle is None:
        ap.error("one of --bundle, --synthetic, --scale-from is required")
    result = {
        "name": args.name,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, faiss {faiss.__version__}",
        "engine": engine_phase(
            bundle, args.queries, args.candidates, args.engine_index, keep_index=args.keep_index, calibration_from=args.scale_from,
            settings={k: v for k, v in (("nprobe", args.nprobe), ("refine_factor", args.refine_factor)) if v is not None},
            refine_sweep=tuple(int(x) for x in args.refine_sweep.split(",") if x),
        ),
    }
    print(json.dumps(result["engine"], indent=1), flush=True)
    if not args.skip_http:
        from model.bundle.format import load_bundle

        b = load_bundle(bundle, verify=False)
        p_test = b.triples["test"]
        rng = np.random.default_rng(1)
        rows = p_test[rng.choice(len(p_test), min(args.http_requests, len(p_test)), replace=False)]
        def bodies_of(rows: np.ndarray) -> list[dict]:
            return [
                {"head": b.vocab.entity_ids[h if i % 2 == 0 else t], "relation": b.vocab.relation_ids[r], "k": 10, "direction": "tail" if i % 2 == 0 else "head"}
                for i, (h, r, t) in enumerate(rows.tolist())
            ]

        bodies = bodies_of(rows)
        valid = b.triples["valid"]
        warmup = bodies_of(valid[rng.choice(len(valid), min(100, len(valid)), replace=False)])
        del b
        gc.collect()
        env = {"IMF_CANDIDATES": str(args.candidates), "IMF_INDEX": args.http_index}
        env.update({k: str(v) for k, v in (("IMF_NPROBE", args.nprobe), ("IMF_REFINE_FACTOR", args.refine_factor)) if v is not None})
        servers: dict[str, tuple[Path, dict[str, str]]] = {"this": (REPO, env)}
        if args.baseline_repo is not None:
            servers["baseline"] = (args.baseline_repo.resolve(), env)
        if args.compare_unbatched:
            servers["unbatched"] = (REPO, {**env, "IMF_BATCH_SIZE": "1"})
        app_times = {name: app_time(bundle, repo) for name, (repo, _) in servers.items() if name != "unbatched"}
        measured = http_phase(bundle, bodies, warmup, servers, rounds=args.rounds)
        for name, t in app_times.items():
            measured[name]["app_time"] = t
        result["http"] = measured.pop("this")
        result["http"]["index"] = args.http_index
        for other in measured.values():
            other["answers_vs_this"] = compare_answers(result["http"]["answers"], other.pop("answers"))
        result["http"].pop("answers")
        result["http_compared"] = measured
    out = REPO / "bench" / "results" / f"serve-{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    e = result["engine"]
    ivf = f", nprobe {e['nprobe']}, refine {e['refine_factor']}" if e["nprobe_sweep"] else ""
    print(f"\n### {args.name}: {e['entities']:,} entities, branches {', '.join(e['branches'])}, {e['index']} index, K'={e['candidates_default']}{ivf}\n")
    print("| measure | value |\n|---|---|")
    default_recall = e["recall_at_10"][f"union@{args.candidates}"]
    print(f"| recall@10 vs exhaustive, default K' (union of the branches' searches) | {default_recall:.4f} |")
    print(f"| recall@10 sweep | {', '.join(f'{k}: {v:.4f}' for k, v in e['recall_at_10'].items())} |")
    print(f"| engine p50 / p99, retrieve + rescore | {e['engine_p50_ms']:.2f} / {e['engine_p99_ms']:.2f} ms |")
    print(f"| engine p50 / p99, exhaustive (baseline) | {e['exhaustive_p50_ms']:.2f} / {e['exhaustive_p99_ms']:.2f} ms |")
    print(f"| engine p50 / p99, reference (the model's own scoring, nothing precomputed) | {e['reference_p50_ms']:.2f} / {e['reference_p99_ms']:.2f} ms |")
    print(f"| exhaustive vs reference: queries whose top 10 differ, max relative score difference | {e['exhaustive_vs_reference_differ']} of {e['queries']}, {e['exhaustive_vs_reference_max_rel_score']:.1e} |")
    ab = e.get("ablation")
    if ab:
        ref = ab["p50_ms"]["reference"]
        for k, v in ab["p50_ms"].items():
            print(f"| ablation p50, {k} | {v:.2f} ms ({ref / v:.2f}x the reference), identical top k: {ab['identical_top_k_vs_reference'][k]} of {ab['queries']} |")
        print(f"| bf16 tables: identical top k vs float32 | {ab['identical_top_k_bf16_vs_float32']} of {ab['queries']} |")
        print(f"| batched, ms per query at B = 1 / 8 / 32 | {' / '.join(f'{v:.2f}' for v in ab['batched_ms_per_query'].values())} |")
    print(f"| speed-up at p50 | {e['speedup_p50']:.1f}x |")
    for nprobe, r in e["nprobe_sweep"].items():
        print(f"| nprobe {nprobe}: recall@10 (K'={args.candidates}), engine p50 | {r['recall_at_10']:.4f}, {r['p50_ms']:.2f} ms |")
    for factor, r in e["refine_sweep"].items():
        print(f"| refine factor {factor}: recall@10 (K'={args.candidates}), engine p50 | {r['recall_at_10']:.4f}, {r['p50_ms']:.2f} ms |")
    if e.get("normaliser"):
        nz = e["normaliser"]
        for m in ("candidates", "estimate"):
            r = nz[m]
            cal = "n/a" if r["calibrated_abs_err_mean"] is None else f"{r['calibrated_abs_err_mean']:.2e} / {r['calibrated_abs_err_max']:.2e}"
            print(f"| softmax normaliser [{m}] vs exact: top 10 order / membership differs, score rel. err mean / max, calibrated abs. err mean / max, log Z err mean | "
                  f"{r['top_k_order_differs']:.3f} / {r['top_k_members_differ']:.3f}, {r['score_rel_err_mean']:.2e} / {r['score_rel_err_max']:.2e}, {cal}, {r['log_z_err_mean']:+.3f} |")
        print(f"| normaliser estimate: p50 | {nz['estimate_p50_ms']:.2f} ms |")
    print(f"| engine process after load: RSS (peak), entity tables, index | {e['rss_after_load_mb']:.0f} MiB ({e.get('rss_peak_load_mb', float('nan')):.0f}), {e['table_bytes'] / 2**20:.0f} MiB, {e['index_bytes'] / 2**20:.0f} MiB |")
    print(f"| start-up: first (builds index) / later (loads it) | {e['first_start_s']:.1f} s / {e['later_start_s']:.1f} s |")
    if "http" in result:
        for label, h in [("this", result["http"]), *result["http_compared"].items()]:
            print(f"| [{label}] server (IMF_INDEX={args.http_index}): time to /ready, RSS (peak) | {h['time_to_ready_s']:.1f} s, {h['rss_after_load_mb']:.0f} MiB ({h.get('rss_peak_mb', float('nan')):.0f}) |")
            print(f"| [{label}] HTTP 1 client: GET /health p50 | {h['health_p50_ms']:.2f} ms |")
            if "app_time" in h:
                t = h["app_time"]
                print(f"| [{label}] app time p50 (in-process ASGI, no network): /health, hit (+ over /health), miss | "
                      f"{t['health_50_ms']:.3f}, {t['hit_50_ms']:.3f} (+{t['hit_50_ms'] - t['health_50_ms']:.3f}), {t['miss_50_ms']:.2f} ms |")
            for c in ("1_clients", "32_clients"):
                r = h[c]
                print(f"| [{label}] HTTP {c.replace('_', ' ')}: miss p50 / p99, req/s | {r['miss_p50_ms']:.2f} / {r['miss_p99_ms']:.1f} ms, {r['miss_rps']:.0f}/s |")
                print(f"| [{label}] HTTP {c.replace('_', ' ')}: hit p50 / p99, req/s | {r['hit_p50_ms']:.2f} / {r['hit_p99_ms']:.1f} ms, {r['hit_rps']:.0f}/s |")
            if "mean_batch_queries" in h:
                print(f"| [{label}] queries per scoring pass, mean over the run | {h['mean_batch_queries']:.1f} |")
            if "answers_vs_this" in h:
                a = h["answers_vs_this"]
                print(f"| [{label}] answers vs this server: queries whose top 10 differ, max relative score difference | {a['differ']} of {a['queries']}, {a['max_rel_score']:.1e} |")
    print(f"\nmachine: {result['machine']}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
