"""Load and fault campaign against the real server process, with a real redis-server.

Phases (each bounded in time and count; a table per phase is printed, and --json writes them):

  mixed      C concurrent clients for T s of mixed traffic: valid predictions, explanations,
             batches, unknown names, malformed JSON, oversize bodies, k out of range. Counts
             5xx, dropped connections and error bodies that are not JSON; p50 / p99; req/s.
  redis      the same load while redis-server is killed and restarted twice: failed requests
             (5xx or dropped) and whether cache hits resume after the last restart.
  overload   open-loop valid predictions (fresh keys, so no cache) at 4x the rate a closed
             loop sustained: share refused with 503, how fast a refusal comes, p99 of what was
             admitted, server memory before / after, and the first answer after the load. The
             Python generator shares the CPU with the server and may not reach 4x: `per_s`
             says what it really offered.
  overload-wrk  the same with wrk (C): the sustainable rate with IMF_MAX_PENDING connections,
             then 4x it for T/2 s; statuses, latency of all responses, memory, recovery.
  schema     schemathesis over the OpenAPI schema, positive and negative: requests, 5xx.
  bundles    start-up against damaged bundles (truncated weights, a flipped byte, a manifest
             naming a file outside the bundle, a tampered FAISS index): exit status and message.

Hostile clients (what a red-team review sent and the phases above did not; sizes are the
review's, each a flag; each phase says pass or fail and why):

  slow-bodies     64 keyless and 64 keyed raw sockets sending `POST /predict` headers with
                  Content-Length 100 and one byte, over and over, while a keyed client sends
                  /predict every 100 ms: its statuses and latency; what the sockets got, when.
  amplification   /predict/batch with 330,000 `{}` and /entities with a numeric map of 90,000
                  invalid values (each 990 kB): status, response bytes, time, /health meanwhile.
  entity-flood    100 POST /entities against IMF_MAX_NEW_ENTITIES=50 (file store): statuses,
                  entities served and stored, /health meanwhile.
  redis-entities  entities added with a cache Redis (LRU) and a store Redis (append-only,
                  noeviction); both killed -9 and restarted: still served? by a fresh server?
  slow-headers    100 connections sending one header line every 10 s and 20 idle ones, 60 s:
                  closed by the server, when; /health on new connections meanwhile.

    python bench/campaign.py --bundle artifacts/default --json bench/results/campaign.json
    python bench/campaign.py --bundle artifacts/default --phases mixed,redis --clients 8 --seconds 5
    python bench/campaign.py --phases slow-bodies,amplification,entity-flood,redis-entities,slow-headers --json bench/results/campaign-hostile.json

tests/test_campaign.py runs short versions of mixed, redis, bundles and every hostile phase in
the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.bundle.format import load_bundle  # noqa: E402
from tests.helpers import CACHE_OPTIONS, STORE_OPTIONS, RedisProcess, free_port, wait_ready  # noqa: E402


# ----------------------------------------------------------------------------- processes
# (free_port, RedisProcess and the readiness poll wait_ready: tests/helpers.py, shared with the tests)


class ServerProcess:
    """`python -m service BUNDLE` on a free loopback port."""

    def __init__(self, bundle: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "IMF_HOST": "127.0.0.1", "IMF_PORT": str(self.port), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.bundle = bundle
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile(mode="w+")
        self._final = ""

    def start(self, timeout: float = 120) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "service", str(self.bundle)], cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        try:
            wait_ready(self.base, timeout, proc=self.proc, output=self.output)
        except BaseException:
            self.stop()  # not left running when it never became ready (or the wait was interrupted)
            raise

    def output(self) -> str:
        if self.log.closed:
            return self._final
        self.log.seek(0)
        return self.log.read()

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().split("\n"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.log.closed:  # keep what it printed, release the file
            self._final = self.output()
            self.log.close()
        return self.proc.returncode


# ----------------------------------------------------------------------------- traffic


@dataclass
class Tally:
    """What a phase saw: status codes, latencies of answered requests, failures by kind."""

    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, 2xx only
    refusal_latencies: list[float] = field(default_factory=list)  # seconds, 503s
    dropped: int = 0  # transport errors: refused / reset / timed out connections
    not_json: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + self.dropped

    def summary(self) -> dict:
        lat = sorted(self.latencies)

        def pct(values: list[float], q: float) -> float | None:
            return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1) if values else None

        return {
            "requests": self.total,
            "per_s": round(self.total / self.seconds, 1) if self.seconds else None,
            "statuses": dict(sorted(self.statuses.items())),
            "5xx": sum(v for k, v in self.statuses.items() if k >= 500 and k != 503),
            "503": self.statuses.get(503, 0),
            "dropped": self.dropped,
            "non_json_errors": len(self.not_json),
            "p50_ms": pct(lat, 0.5),
            "p99_ms": pct(lat, 0.99),
            "refusal_p50_ms": pct(sorted(self.refusal_latencies), 0.5),
            "examples": (self.server_errors + self.not_json)[:5],
        }


class Traffic:
    """Request makers over a bundle's real names."""

    def __init__(self, bundle_path: Path, seed: int = 0, max_body: int = 1_000_000) -> None:
        b = load_bundle(bundle_path, verify=False)
        train = b.triples["train"]
        self.rng = random.Random(seed)
        self.pairs = [(b.vocab.entity_names[h], b.vocab.relation_ids[r]) for h, r, _ in train[self.rng.sample(range(len(train)), min(2000, len(train)))].tolist()]
        self.ids = b.vocab.entity_ids
        self.relation_ids = b.vocab.relation_ids
        self.num_entities = len(b.vocab.entity_ids)
        self.max_body = max_body

    def valid(self, k: int | None = None) -> tuple[str, str, dict | bytes]:
        head, rel = self.rng.choice(self.pairs)
        return "POST", "/predict", {"head": head, "relation": rel, "k": k or self.rng.choice([1, 5, 10, 20]), "direction": self.rng.choice(["tail", "head"])}

    def fresh(self) -> tuple[str, str, dict | bytes]:
        """A valid prediction unlikely to be cached: a random head id, relation and k."""
        return "POST", "/predict", {"head": self.rng.choice(self.ids), "relation": self.rng.choice(self.relation_ids), "k": self.rng.randint(1, 50), "direction": self.rng.choice(["tail", "head"])}

    def mixed(self) -> tuple[str, str, dict | bytes]:
        x = self.rng.random()
        if x < 0.45:
            return self.valid()
        if x < 0.55:
            head, rel = self.rng.choice(self.pairs)
            return "POST", "/explain", {"head": head, "relation": rel, "k": 5}
        if x < 0.65:
            return "POST", "/predict/batch", {"queries": [self.valid()[2] for _ in range(self.rng.randint(2, 16))]}
        if x < 0.75:
            head, rel = self.rng.choice(self.pairs)
            return "POST", "/predict", {"head": head + " Jr. the Third", "relation": rel}  # unknown name: 404 + suggestions
        if x < 0.80:
            return "GET", f"/entities?q={self.rng.choice(self.pairs)[0][:4]}", b""
        if x < 0.87:
            return "POST", "/predict", b'{"head": "x", "relation": '  # malformed JSON
        if x < 0.92:
            return "POST", "/predict", b'{"head": "' + b"a" * (self.max_body + 10) + b'"}'  # oversize
        head, rel = self.rng.choice(self.pairs)
        return "POST", "/predict", {"head": head, "relation": rel, "k": self.rng.choice([0, -1, 10**6])}  # k out of range


async def send(http: httpx.AsyncClient, method: str, path: str, body: dict | bytes, tally: Tally) -> None:
    t0 = time.perf_counter()
    try:
        if isinstance(body, dict):
            res = await http.request(method, path, json=body)
        else:
            res = await http.request(method, path, content=body or None, headers={"content-type": "application/json"} if body else None)
    except httpx.TransportError as exc:
        tally.dropped += 1
        tally.server_errors.append(f"{method} {path}: {type(exc).__name__}")
        return
    dt = time.perf_counter() - t0
    tally.statuses[res.status_code] += 1
    if res.status_code < 300:
        tally.latencies.append(dt)
        return
    if res.status_code == 503:
        tally.refusal_latencies.append(dt)
    if res.status_code >= 500 and res.status_code != 503:
        tally.server_errors.append(f"{method} {path} -> {res.status_code}: {res.text[:200]}")
    try:
        ok = "error" in res.json()
    except ValueError:
        ok = False
    if not ok:
        tally.not_json.append(f"{method} {path} -> {res.status_code}: {res.text[:200]}")


async def closed_loop(base: str, make, clients: int, seconds: float, events: list[tuple[float, callable]] | None = None) -> Tally:
    """`clients` workers, each sending the next request as soon as the last one is answered;
    `events` (at seconds since start, a callable) run meanwhile (killing Redis, ...)."""
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        t0 = time.monotonic()

        async def worker() -> None:
            while time.monotonic() - t0 < seconds:
                await send(http, *make(), tally)

        async def scheduler() -> None:
            for at, fn in sorted(events or [], key=lambda e: e[0]):
                await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
                await asyncio.to_thread(fn)

        await asyncio.gather(scheduler(), *(worker() for _ in range(clients)))
        tally.seconds = time.monotonic() - t0
    return tally


async def open_loop(base: str, make, rate: float, seconds: float, max_outstanding: int = 1024) -> Tally:
    """Requests started at a fixed rate whatever the answers (overload is not self-limiting)."""
    tally = Tally()
    limits = httpx.Limits(max_connections=max_outstanding, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        t0 = time.monotonic()
        tasks: set[asyncio.Task] = set()
        n = 0
        while time.monotonic() - t0 < seconds:
            due = t0 + n / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if len(tasks) < max_outstanding:
                task = asyncio.ensure_future(send(http, *make(), tally))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                tally.statuses[-1] += 1  # client-side cap reached: not sent (reported)
            n += 1
        await asyncio.gather(*tasks)
        tally.seconds = time.monotonic() - t0
    return tally


def cache_hits(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.split("\n") if line.startswith("imf_cache_hits_total"))


# ----------------------------------------------------------------------------- phases


def phase_mixed(bundle: Path, clients: int, seconds: float, workdir: Path) -> dict:
    redis = RedisProcess(workdir)
    redis.start()
    server = ServerProcess(bundle, {"IMF_REDIS_URL": redis.url, "IMF_SAVE_INDEX": "false"})
    try:
        server.start()
        traffic = Traffic(bundle)
        tally = asyncio.run(closed_loop(server.base, traffic.mixed, clients, seconds))
        return {"phase": "mixed", "clients": clients, "seconds": seconds, **tally.summary(), "server_exit": server.stop()}
    finally:
        server.stop()
        redis.kill()


def phase_redis(bundle: Path, clients: int, seconds: float, workdir: Path) -> dict:
    redis = RedisProcess(workdir)
    redis.start()
    server = ServerProcess(bundle, {"IMF_REDIS_URL": redis.url, "IMF_SAVE_INDEX": "false", "IMF_REDIS_TIMEOUT_S": "0.2"})
    marks: dict[str, float] = {}
    try:
        server.start()
        traffic = Traffic(bundle, seed=1)
        traffic.pairs = traffic.pairs[:20]  # a small working set (160 keys), so hits are frequent
        events = [
            (0.15 * seconds, redis.kill), (0.3 * seconds, redis.start),
            (0.45 * seconds, redis.kill), (0.6 * seconds, redis.start),
            (0.62 * seconds, lambda: marks.setdefault("hits_after_restart", cache_hits(server.base))),
        ]
        tally = asyncio.run(closed_loop(server.base, traffic.valid, clients, seconds, events))
        hits_end = cache_hits(server.base)
        resumed = hits_end - marks.get("hits_after_restart", hits_end)
        out = {"phase": "redis", "clients": clients, "seconds": seconds, "redis_restarts": 2, **tally.summary(), "cache_hits_after_last_restart": resumed}
        out["failed"] = out["5xx"] + out["dropped"] + out["503"]
        out["server_exit"] = server.stop()
        return out
    finally:
        server.stop()
        redis.kill()


def phase_overload(bundle: Path, clients: int, seconds: float, workdir: Path, factor: float = 4.0) -> dict:
    server = ServerProcess(bundle, {"IMF_SAVE_INDEX": "false"})
    try:
        server.start()
        traffic = Traffic(bundle, seed=2)
        base = asyncio.run(closed_loop(server.base, traffic.fresh, clients, min(10.0, seconds / 2)))  # sustainable rate
        rate = factor * base.total / base.seconds
        rss_before = server.rss_mb()
        over = asyncio.run(open_loop(server.base, traffic.fresh, rate, seconds))
        rss_after = server.rss_mb()
        t0 = time.perf_counter()
        first = httpx.post(f"{server.base}/predict", json=traffic.fresh()[2], timeout=30)
        recovery_ms = round(1000 * (time.perf_counter() - t0), 1)
        return {
            "phase": "overload", "sustained_per_s": round(base.total / base.seconds, 1), "offered_per_s": round(rate, 1), "seconds": seconds,
            **over.summary(), "rss_mb_before": round(rss_before), "rss_mb_after": round(rss_after),
            "first_after": first.status_code, "first_after_ms": recovery_ms, "server_exit": server.stop(),
        }
    finally:
        server.stop()


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {BODIES}
local threads = {}
c200, c503, cother, cnonjson = 0, 0, 0, 0
function setup(thread) table.insert(threads, thread) end
function request() return wrk.format(nil, "/predict", nil, bodies[math.random(#bodies)]) end
function delay() return {DELAY} end
function response(status, headers, body)
  if status == 200 then c200 = c200 + 1 elseif status == 503 then c503 = c503 + 1 else cother = cother + 1 end
  if status ~= 200 and string.sub(body, 1, 9) ~= '{"error":' then cnonjson = cnonjson + 1 end
end
function done(summary, latency, requests)
  local a, b, c, d = 0, 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("c200"); b = b + t:get("c503"); c = c + t:get("cother"); d = d + t:get("cnonjson") end
  io.write(string.format("RESULT %d %d %d %d %d %d %.1f %.1f %.1f\\n", a, b, c, d, summary.errors.connect + summary.errors.read + summary.errors.write, summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def _wrk(wrk: str, base: str, bodies: list[str], connections: int, seconds: float, delay_ms: int) -> dict:
    lua = WRK_SCRIPT.replace("{BODIES}", "{" + ",".join("[==[" + b + "]==]" for b in bodies) + "}").replace("{DELAY}", str(int(delay_ms)))
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(lua)
    try:
        proc = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "30s", "-s", str(script), base], capture_output=True, text=True, timeout=seconds + 120)
    finally:
        script.unlink()
    line = next((x for x in proc.stdout.split("\n") if x.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    ok, refused, other, nonjson, sock_errors, timeouts, p50, p99, pmax = line.split()[1:]
    total = int(ok) + int(refused) + int(other)
    return {"requests": total, "per_s": round(total / seconds, 1), "answered_per_s": round(int(ok) / seconds, 1), "200": int(ok), "503": int(refused),
            "5xx": int(other), "non_json_errors": int(nonjson), "dropped": int(sock_errors) + int(timeouts), "p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(pmax)}


def phase_overload_wrk(bundle: Path, seconds: float, factor: float = 4.0, max_pending: int = 64) -> dict:
    """Overload with wrk (C, one thread: far cheaper than a Python generator on shared cores).
    First `max_pending` connections back to back for 10 s: the sustainable rate (nothing is
    refused). Then 4x that rate for `seconds`: 4 x max_pending connections, each pausing so
    that together they offer `factor` x the sustainable rate (wrk's delay(); close to an open
    loop while answers are fast, as refusals are)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk not installed (apt-get install wrk)")
    server = ServerProcess(bundle, {"IMF_SAVE_INDEX": "false", "IMF_MAX_PENDING": str(max_pending)})
    try:
        server.start()
        traffic = Traffic(bundle, seed=3)
        bodies = [json.dumps(traffic.fresh()[2]) for _ in range(2000)]
        base = _wrk(wrk, server.base, bodies, max_pending, 10, 0)
        sustained = max(base["answered_per_s"], 1.0)
        connections = int(factor * max_pending)
        delay_ms = 1000 * connections / (factor * sustained)
        rss_before = server.rss_mb()
        over = _wrk(wrk, server.base, bodies, connections, seconds, delay_ms)
        rss_after = server.rss_mb()
        # Recovery: requests one after another until one is answered (the requests admitted
        # before the load stopped drain first).
        t0 = time.perf_counter()
        first = httpx.post(f"{server.base}/predict", json=traffic.fresh()[2], timeout=30)
        first_ms = round(1000 * (time.perf_counter() - t0), 1)
        answered_after = first
        while answered_after.status_code != 200 and time.perf_counter() - t0 < 30:
            time.sleep(0.02)
            answered_after = httpx.post(f"{server.base}/predict", json=traffic.fresh()[2], timeout=30)
        first_200_ms = round(1000 * (time.perf_counter() - t0), 1)
        metrics = httpx.get(f"{server.base}/metrics", timeout=10).text
        shed = {x.split("reason=")[1].split("}")[0].strip('"'): float(x.split()[-1]) for x in metrics.split("\n") if x.startswith("imf_shed_total{")}
        return {
            "phase": "overload (wrk)", "sustained_per_s": sustained, "sustained_p99_ms": base["p99_ms"], "offered_target_per_s": round(factor * sustained, 1),
            "connections": connections, "delay_ms": round(delay_ms), "seconds": seconds, **over, "shed_by_reason": shed,
            "rss_mb_before": round(rss_before), "rss_mb_after": round(rss_after), "first_after": first.status_code,
            "first_after_ms": first_ms, "first_200_after_ms": first_200_ms if answered_after.status_code == 200 else None, "server_exit": server.stop(),
        }
    finally:
        server.stop()


def phase_schema(bundle: Path, examples: int) -> dict:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    server = ServerProcess(bundle, {"IMF_SAVE_INDEX": "false"})
    try:
        server.start()
        schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
        counts: Counter = Counter()
        failures: list[str] = []
        errors: list[str] = []
        for result in schema.get_all_operations():
            op = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=op.as_strategy(generation_mode=mode))
                @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
                def run(case) -> None:
                    res = case.call(base_url=server.base, timeout=30)
                    counts[res.status_code] += 1
                    if res.status_code >= 500:
                        failures.append(f"{case.method} {case.formatted_path} -> {res.status_code}")

                try:
                    run()
                except Unsatisfiable:
                    pass  # a negative mode with nothing to violate (no parameters)
                except Exception as exc:  # a generation problem, not a server answer: report it
                    errors.append(f"{op.method.upper()} {op.path} {mode.name}: {type(exc).__name__}: {str(exc)[:200]}")
        return {"phase": "schema", "requests": sum(counts.values()), "statuses": dict(sorted(counts.items())), "5xx": len(failures), "examples": failures[:5], "generation_errors": errors, "server_exit": server.stop()}
    finally:
        server.stop()


def damaged_bundles(bundle: Path, workdir: Path) -> list[tuple[str, Path, str]]:
    """(name, bundle copy, text the refusal must contain) for each kind of damage."""
    out = []

    def copy(name: str) -> Path:
        dst = workdir / name
        shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("index"))
        return dst

    b = copy("truncated-weights")
    w = b / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    out.append(("truncated weights", b, "weights.safetensors"))
    b = copy("flipped-byte")
    e = b / "entities.tsv"
    data = bytearray(e.read_bytes())
    data[len(data) // 2] ^= 0x01
    e.write_bytes(bytes(data))
    out.append(("flipped byte in entities.tsv", b, "entities.tsv"))
    b = copy("manifest-outside")
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["../../etc/passwd"] = "0" * 64
    (b / "manifest.json").write_text(json.dumps(m))
    out.append(("manifest names ../../etc/passwd", b, "../../etc/passwd"))
    return out


def phase_bundles(bundle: Path, workdir: Path) -> list[dict]:
    rows = []
    for name, path, must in damaged_bundles(bundle, workdir):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "service", str(path)], cwd=REPO, env={**os.environ, "IMF_PORT": str(free_port())}, capture_output=True, text=True, timeout=120)
        msg = (proc.stderr.strip().split("\n") or [""])[-1]
        rows.append({"bundle": name, "exit": proc.returncode, "names_the_file": must in msg, "message": msg[:200], "seconds": round(time.monotonic() - t0, 1)})
    # A tampered FAISS index: refused before FAISS parses it (the log names the file), then
    # rebuilt from the verified weights; the server starts. Needs an index kind that is saved.
    b = workdir / "tampered-index"
    shutil.copytree(bundle, b, ignore=shutil.ignore_patterns("index"))
    env = {"IMF_INDEX": "flat", "IMF_SAVE_INDEX": "true"}
    first = ServerProcess(b, env)
    first.start()
    first.stop()
    idx = b / "index" / "flat.faiss"
    data = bytearray(idx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    idx.write_bytes(bytes(data))
    second = ServerProcess(b, env)
    t0 = time.monotonic()
    second.start()
    try:
        ok = httpx.post(f"{second.base}/predict", json={"head": load_bundle(b, verify=False).vocab.entity_ids[0], "relation": load_bundle(b, verify=False).vocab.relation_ids[0], "k": 3}, timeout=30).status_code
    finally:
        exit_code = second.stop()
    log = second.output()
    line = next((x for x in log.split("\n") if "checksum mismatch" in x), "")
    rows.append({"bundle": "tampered FAISS index", "exit": exit_code, "names_the_file": str(idx) in line, "message": line.split(" - ")[-1][:200] or log[-200:],
                 "seconds": round(time.monotonic() - t0, 1), "then": f"rebuilt; /predict {ok}"})
    return rows


# ----------------------------------------------------------------------------- hostile clients
# The phases below send what the ones above never do: bodies and headers that arrive slowly or
# never, requests whose error answer outgrows them, more entities than a server should hold,
# and a durable store Redis killed under acknowledged writes. Each returns its figures and a
# judgement ("pass": bool, "judgement": what held or not), and bounds its own time.

CAMPAIGN_KEY = "campaign-key-0123456789"  # IMF_API_KEY of the phases that need a keyed client
CRLF = b"\r\n"


class HealthProbe:
    """GET /health every `interval` s from a thread of its own while a phase runs.

    A thread, not a task on the phase's event loop: the phase's own work (building a 1 MB body,
    reading a 56 MB answer) must not be counted as the server's latency. `fresh` opens a new
    connection per probe (a new client, as a load balancer's check is), else one kept alive.
    """

    def __init__(self, base: str, interval: float = 0.1, fresh: bool = False, timeout: float = 120.0) -> None:
        self.base, self.interval, self.fresh, self.timeout = base, interval, fresh, timeout
        self.statuses: Counter = Counter()
        self.latencies: list[float] = []  # seconds, every probe that got an answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = None if self.fresh else httpx.Client(base_url=self.base, timeout=self.timeout)
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    res = httpx.get(f"{self.base}/health", timeout=self.timeout) if client is None else client.get("/health")
                    self.statuses[res.status_code] += 1
                    self.latencies.append(time.perf_counter() - t0)
                except httpx.TransportError as exc:
                    self.statuses[type(exc).__name__] += 1
                self._stop.wait(max(0.0, self.interval - (time.perf_counter() - t0)))
        finally:
            if client is not None:
                client.close()

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def summary(self) -> dict:
        lat = sorted(self.latencies)

        def ms(q: float) -> float | None:
            return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

        return {"probes": sum(self.statuses.values()), "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
                "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": round(1000 * lat[-1], 1) if lat else None}


def _status_of(line: bytes) -> int | str:
    """The status code of an HTTP response's first line, or what came instead."""
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return "closed" if not line else "garbage"


def _ms(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1) if values else None


async def _slow_body_attacker(port: int, stop_at: float, outcomes: list[tuple[int | str, float]], key: str | None, reconnect: bool, pause: float) -> None:
    """One socket: `POST /predict` headers declaring 100 bytes, 1 byte of body, with `key` or
    none; then wait for whatever the server says. With `reconnect`, start over after each
    answer, as an attacker would, until `stop_at`."""
    auth = f"X-API-Key: {key}\r\n" if key else ""
    head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{".encode()
    while True:
        left = stop_at - time.monotonic()
        if left <= 0:
            return
        t0 = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            outcomes.append((f"connect: {type(exc).__name__}", time.monotonic() - t0))
            await asyncio.sleep(pause)
            continue
        try:
            writer.write(head)
            await writer.drain()
            try:
                status: int | str = _status_of(await asyncio.wait_for(reader.readline(), left))
            except TimeoutError:
                status = "open at end"
            except OSError:
                status = "reset"
            outcomes.append((status, time.monotonic() - t0))
        finally:
            writer.close()
        if not reconnect:
            await asyncio.sleep(max(0.0, stop_at - time.monotonic()))  # hold the phase open, send nothing more
            return
        await asyncio.sleep(pause)


async def _slow_bodies(server: ServerProcess, traffic: Traffic, sockets: int, keyed_sockets: int, seconds: float, interval: float, reconnect: bool) -> dict:
    settle = 1.0  # every attacking socket has sent its headers before the keyed client starts
    stop_at = time.monotonic() + settle + seconds
    outcomes: dict[str, list[tuple[int | str, float]]] = {"keyless": [], "keyed": []}
    attackers = [asyncio.ensure_future(_slow_body_attacker(server.port, stop_at, outcomes["keyless"], None, reconnect, pause=0.2)) for _ in range(sockets)]
    attackers += [asyncio.ensure_future(_slow_body_attacker(server.port, stop_at, outcomes["keyed"], CAMPAIGN_KEY, reconnect, pause=0.2)) for _ in range(keyed_sockets)]
    await asyncio.sleep(settle)
    client = Tally()
    latencies: list[float] = []  # every answer, 503s included: what the client waited
    async with httpx.AsyncClient(base_url=server.base, timeout=30, headers={"X-API-Key": CAMPAIGN_KEY}) as http:

        async def one() -> None:
            t0 = time.perf_counter()
            try:
                res = await http.post("/predict", json=traffic.valid(k=5)[2])
                client.statuses[res.status_code] += 1
                latencies.append(time.perf_counter() - t0)
            except httpx.TransportError as exc:
                client.dropped += 1
                client.server_errors.append(type(exc).__name__)

        t0 = time.monotonic()
        tasks, n = [], 0
        while time.monotonic() - t0 < seconds:  # open loop: one request every `interval`, answered or not
            tasks.append(asyncio.ensure_future(one()))
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * interval - time.monotonic()))
        await asyncio.gather(*tasks)
    await asyncio.gather(*attackers)
    return {"client": client, "latencies": latencies, "outcomes": outcomes}


def _outcomes(rows: list[tuple[int | str, float]], limit: float) -> dict:
    """What a group of slow sockets got: counts by answer, how long an answer took, how many
    were still waiting past `limit` seconds (holding whatever the server gave them)."""
    answered = sorted(dt for status, dt in rows if isinstance(status, int))
    held = [dt for status, dt in rows if not isinstance(status, int) and dt > limit]
    return {"attempts": len(rows), "outcomes": {str(k): v for k, v in sorted(Counter(s for s, _ in rows).items(), key=str)},
            "answer_p50_s": round(answered[len(answered) // 2], 2) if answered else None, "answer_max_s": round(answered[-1], 2) if answered else None,
            "held_past_deadline": len(held), "longest_hold_s": round(max(held, default=0.0), 1)}


def phase_slow_bodies(bundle: Path, sockets: int = 64, seconds: float = 20.0, body_timeout: float = 5.0, max_pending: int = 64,
                      interval: float = 0.1, keyed_sockets: int | None = None, reconnect: bool = True) -> dict:
    """`sockets` raw connections each send `POST /predict` headers with Content-Length 100 and
    one byte of body without a key (IMF_API_KEY is set), and `keyed_sockets` (default as many)
    the same with the key, as an attacker holding one would; each waits for the answer and
    starts over. Meanwhile a keyed client sends a valid /predict every `interval` s for
    `seconds`. Held: every one of the client's requests answered 200, and no slow socket still
    waiting well past IMF_BODY_TIMEOUT_S (keyless ones may be refused 401 before their body is
    read; keyed ones are cut off with 408). Before the body deadline the keyless sockets alone
    held all IMF_MAX_PENDING slots and the client got 503 for as long as they stayed open."""
    keyed_sockets = sockets if keyed_sockets is None else keyed_sockets
    server = ServerProcess(bundle, {"IMF_SAVE_INDEX": "false", "IMF_API_KEY": CAMPAIGN_KEY, "IMF_MAX_PENDING": str(max_pending), "IMF_BODY_TIMEOUT_S": str(body_timeout)})
    try:
        server.start()
        raw = asyncio.run(_slow_bodies(server, Traffic(bundle, seed=4), sockets, keyed_sockets, seconds, interval, reconnect))
        client: Tally = raw["client"]
        # Held: still waiting well past the deadline (twice it, and at least 2 s more: slack
        # for a loaded machine, the deadline is kept by the server's event loop).
        limit = body_timeout + max(2.0, body_timeout)
        keyless, keyed = _outcomes(raw["outcomes"]["keyless"], limit), _outcomes(raw["outcomes"]["keyed"], limit)
        client_ok = client.total > 0 and client.statuses.get(200, 0) == client.total
        held = keyless["held_past_deadline"] + keyed["held_past_deadline"]
        out = {
            "phase": "slow bodies", "sockets": sockets, "keyed_sockets": keyed_sockets, "seconds": seconds, "body_timeout_s": body_timeout, "max_pending": max_pending,
            "reconnect": reconnect, "client_requests": client.total, "client_statuses": {str(k): v for k, v in sorted(client.statuses.items())}, "client_dropped": client.dropped,
            "client_p50_ms": _ms(raw["latencies"], 0.5), "client_p99_ms": _ms(raw["latencies"], 0.99), "client_max_ms": _ms(raw["latencies"], 1.0),
            "keyless": keyless, "keyed": keyed, "held_past_deadline": held, "pass": client_ok and held == 0,
        }
        out["judgement"] = (f"held: the keyed client's /predict all 200; keyless slow bodies {keyless['outcomes']}, keyed {keyed['outcomes']}" if out["pass"]
                            else f"hole: keyed client {out['client_statuses']}; keyless slow bodies {keyless['outcomes']}, keyed {keyed['outcomes']}; {held} waiting past {limit:.0f} s")
        out["server_exit"] = server.stop()
        return out
    finally:
        server.stop()


def _batch_of_empties(items: int) -> bytes:
    return b'{"queries":[' + b",".join([b"{}"] * items) + b"]}"


def _numeric_map(keys: int) -> bytes:
    # Each value an empty string, not a number: one validation error per key (11 bytes each),
    # which is what made the answer outgrow the request.
    return b'{"name":"Amplified","numeric":{' + b",".join(b'"%05d":""' % i for i in range(keys)) + b"}}"


def phase_amplification(bundle: Path, workdir: Path, items: int = 330_000, keys: int = 90_000, max_response: int = 100_000, max_stall_ms: float = 1000.0) -> dict:
    """Requests under IMF_MAX_BODY_BYTES whose answer or work outgrows them: POST /predict/batch
    with `items` empty objects, and POST /entities (IMF_ALLOW_NEW_ENTITIES) with a `numeric` map
    of `keys` keys. For each: status, response bytes, errors listed and counted, time to answer,
    and GET /health meanwhile (every 0.1 s). Held: each refused (4xx) with an answer under
    `max_response` bytes, and /health never waiting more than `max_stall_ms`."""
    server = ServerProcess(bundle, {"IMF_SAVE_INDEX": "false", "IMF_ALLOW_NEW_ENTITIES": "true", "IMF_STATE_DIR": str(workdir / "amplification-state")})
    rows = []
    try:
        server.start()
        cases = [(f"/predict/batch, {items:,} empty objects", "/predict/batch", _batch_of_empties(items)),
                 (f"/entities, numeric map of {keys:,} keys", "/entities", _numeric_map(keys))]
        with httpx.Client(base_url=server.base, timeout=300) as http:
            for name, path, body in cases:
                with HealthProbe(server.base) as probe:
                    time.sleep(0.3)  # a few probes before: the baseline
                    t0 = time.perf_counter()
                    try:
                        res = http.post(path, content=body, headers={"content-type": "application/json"})
                        status, size, text = res.status_code, len(res.content), res.content
                    except httpx.TransportError as exc:
                        status, size, text = type(exc).__name__, 0, b""
                    seconds = time.perf_counter() - t0
                    time.sleep(0.3)
                try:
                    error = json.loads(text)["error"]
                except (ValueError, KeyError, TypeError):
                    error = {}
                health = probe.summary()
                ok = isinstance(status, int) and 400 <= status < 500 and size <= max_response and (health["max_ms"] or 0) <= max_stall_ms
                rows.append({
                    "request": name, "request_bytes": len(body), "status": status, "response_bytes": size, "seconds": round(seconds, 2),
                    "errors_listed": len(error.get("details") or []), "errors_counted": error.get("errors"), "message": str(error.get("message", ""))[:160],
                    "health_max_ms": health["max_ms"], "health_p50_ms": health["p50_ms"], "health": health, "pass": ok,
                })
        exit_code = server.stop()
    finally:
        server.stop()
    return {"phase": "amplification", "rows": rows, "pass": all(r["pass"] for r in rows), "server_exit": exit_code,
            "judgement": "held: small refusals, /health unaffected" if all(r["pass"] for r in rows) else
            "hole: " + "; ".join(f"{r['request']} -> {r['status']}, {r['response_bytes']:,} bytes, {r['seconds']} s, /health max {r['health_max_ms']} ms" for r in rows if not r["pass"])}


def _new_entity(i: int, tag: str = "flood") -> dict:
    return {"id": f"{tag}/{i}", "name": f"Campaign {tag} entity {i}", "description": f"a synthetic entity number {i}, added by the load campaign"}


async def _post_entities(base: str, bodies: list[dict], clients: int) -> tuple[Counter, list[float], list[str]]:
    """POST each of `bodies` to /entities, `clients` at once: statuses, latencies (s), examples
    of refusals."""
    statuses: Counter = Counter()
    latencies: list[float] = []
    examples: list[str] = []
    queue = list(bodies)
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:

        async def worker() -> None:
            while queue:
                body = queue.pop(0)
                t0 = time.perf_counter()
                try:
                    res = await http.post("/entities", json=body)
                except httpx.TransportError as exc:
                    statuses[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                statuses[res.status_code] += 1
                if res.status_code not in (200, 201) and len(examples) < 3:
                    examples.append(f"{res.status_code}: {res.text[:160]}")

        await asyncio.gather(*(worker() for _ in range(clients)))
    return statuses, latencies, examples


def _stored(state: Path) -> int:
    return sum(1 for f in state.glob("entities-*.jsonl") for line in f.read_text(encoding="utf-8").splitlines() if line.strip())


def phase_entity_flood(bundle: Path, workdir: Path, cap: int = 50, entities: int = 100, clients: int = 4, preload: int = 5000, scale_adds: int = 20,
                       max_stall_ms: float = 250.0) -> dict:
    """Two parts, the file store (IMF_STATE_DIR) and GET /health every 0.1 s throughout.

    The cap: POST /entities `entities` times (distinct entities, `clients` at once) against
    IMF_MAX_NEW_ENTITIES=`cap`. Held: exactly `cap` added (201), the rest 409, `cap` served and
    stored. One entity is added first, outside the measurement: it loads the text encoder.

    The store at scale (`preload` > 0): a store already holding `preload` entities (copies of a
    record the server wrote, under new ids), a server whose cap leaves room, `scale_adds` more
    added. Held: all 201 and /health never waiting more than `max_stall_ms`: the file work is
    off the event loop (a store rewritten whole on the loop at each addition stalled it)."""
    state = workdir / "flood-state"
    server = ServerProcess(bundle, {"IMF_SAVE_INDEX": "false", "IMF_ALLOW_NEW_ENTITIES": "true", "IMF_MAX_NEW_ENTITIES": str(cap), "IMF_STATE_DIR": str(state)})
    try:
        server.start()
        first = httpx.post(f"{server.base}/entities", json=_new_entity(0), timeout=120)
        t0 = time.monotonic()
        with HealthProbe(server.base) as probe:
            statuses, latencies, examples = asyncio.run(_post_entities(server.base, [_new_entity(i) for i in range(1, entities)], clients))
        seconds = time.monotonic() - t0
        statuses[first.status_code] += 1
        served = (httpx.get(f"{server.base}/info", timeout=30).json().get("new_entities") or {}).get("added")
        exit_code = server.stop()
    finally:
        server.stop()
    stored = _stored(state)
    health = probe.summary()
    expect = {201: min(cap, entities)} | ({409: entities - cap} if entities > cap else {})
    cap_ok = dict(statuses) == expect and served == min(cap, entities) and stored == min(cap, entities)
    out = {
        "phase": "entity flood", "cap": cap, "entities": entities, "clients": clients, "seconds": round(seconds, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)}, "served": served, "stored": stored,
        "p50_ms": _ms(latencies, 0.5), "p99_ms": _ms(latencies, 0.99), "health_max_ms": health["max_ms"], "health_p99_ms": health["p99_ms"], "health": health,
        "examples": examples, "server_exit": exit_code,
    }
    problems = [] if cap_ok else [f"statuses {out['statuses']} (expected {expect}), served {served}, stored {stored}"]
    if preload > 0:
        out["scale"] = scale = _store_at_scale(bundle, workdir, state, preload, scale_adds, clients)
        if not (scale["statuses"] == {"201": scale_adds} and (scale["health_max_ms"] or 0) <= max_stall_ms):
            problems.append(f"with {preload:,} stored: statuses {scale['statuses']}, /health max {scale['health_max_ms']} ms")
    out["pass"] = not problems
    out["judgement"] = (f"held: {cap} added, the rest 409" + (f"; with {preload:,} stored, /health max {out['scale']['health_max_ms']} ms" if preload > 0 else "")
                        if not problems else "hole: " + "; ".join(problems))
    return out


def _store_at_scale(bundle: Path, workdir: Path, template_state: Path, preload: int, adds: int, clients: int) -> dict:
    """A file store preloaded with `preload` copies of a record from `template_state` (new ids
    and names), then `adds` entities added with /health probed: what a store near a large cap
    costs each addition, and the event loop."""
    template = next(line for f in template_state.glob("entities-*.jsonl") for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
    name = next(template_state.glob("entities-*.jsonl")).name
    record = json.loads(template)
    state = workdir / "scale-state"
    state.mkdir(parents=True, exist_ok=True)
    with open(state / name, "w", encoding="utf-8") as fh:
        for i in range(preload):
            fh.write(json.dumps({**record, "id": f"preload/{i}", "name": f"Preloaded entity {i}"}) + "\n")
    size_mb = (state / name).stat().st_size / 2**20
    server = ServerProcess(bundle, {"IMF_SAVE_INDEX": "false", "IMF_ALLOW_NEW_ENTITIES": "true", "IMF_MAX_NEW_ENTITIES": str(preload + adds + 10), "IMF_STATE_DIR": str(state)})
    try:
        server.start(timeout=300)
        served_before = (httpx.get(f"{server.base}/info", timeout=30).json().get("new_entities") or {}).get("added")
        httpx.post(f"{server.base}/entities", json=_new_entity(0, "scale-warmup"), timeout=120)  # loads the text encoder, outside the measurement
        with HealthProbe(server.base) as probe:
            statuses, latencies, _ = asyncio.run(_post_entities(server.base, [_new_entity(i, "scale") for i in range(adds)], clients))
        served_after = (httpx.get(f"{server.base}/info", timeout=30).json().get("new_entities") or {}).get("added")
        server.stop()
    finally:
        server.stop()
    health = probe.summary()
    return {"preload": preload, "file_mb": round(size_mb, 1), "adds": adds, "served_before": served_before, "served_after": served_after,
            "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)}, "add_p50_ms": _ms(latencies, 0.5), "add_max_ms": _ms(latencies, 1.0),
            "health_p50_ms": health["p50_ms"], "health_max_ms": health["max_ms"], "health": health}


# The compose stack's cache: bounded, least recently used keys evicted (the store: STORE_OPTIONS).
CACHE_REDIS = [*CACHE_OPTIONS, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]


def _served_entities(base: str, records: list[dict], relation: str) -> dict:
    """How many of `records` a server finds by name (GET /entities?q=) and answers for (/predict
    with the id as head, echoing the name it was added with: not stale content)."""
    found = predicted = 0
    with httpx.Client(base_url=base, timeout=60) as http:
        for r in records:
            hits = http.get("/entities", params={"q": r["name"], "limit": 5})
            found += hits.status_code == 200 and any(h["entity"] == r["id"] for h in hits.json()["entities"])
            res = http.post("/predict", json={"head": r["id"], "relation": relation, "k": 3})
            predicted += res.status_code == 200 and res.json()["query"]["head"]["name"] == r["name"]
        info = http.get("/info").json().get("new_entities") or {}
    return {"found": found, "predicted": predicted, "added": info.get("added")}


def phase_redis_entities(bundle: Path, workdir: Path, entities: int = 20, sync_s: float = 0.5) -> dict:
    """Acknowledged entities across a crash of both Redis: a cache Redis (LRU, no persistence)
    and a store Redis (append-only file, fsync always, noeviction) for IMF_STORE_REDIS_URL. Add
    `entities` (201 each), kill -9 and restart both Redis, then: does the running server still
    find and answer for each, can it add one more (the version counter did not start over), and
    does a fresh server process serve all of them. Held: every acknowledged entity everywhere."""
    cache = RedisProcess(workdir / "redis-cache", options=CACHE_REDIS)
    store = RedisProcess(workdir / "redis-store", options=STORE_OPTIONS)
    cache.start()
    store.start()
    env = {"IMF_SAVE_INDEX": "false", "IMF_REDIS_URL": cache.url, "IMF_STORE_REDIS_URL": store.url, "IMF_ALLOW_NEW_ENTITIES": "true",
           "IMF_ENTITY_SYNC_S": str(sync_s), "IMF_STATE_DIR": str(workdir / "redis-entities-state")}
    server = ServerProcess(bundle, env)
    fresh = ServerProcess(bundle, env)
    try:
        server.start()
        relation = load_bundle(bundle, verify=False).vocab.relation_ids[0]
        added: list[dict] = []
        statuses: Counter = Counter()
        with httpx.Client(base_url=server.base, timeout=120) as http:
            for i in range(entities):
                body = _new_entity(i, "durable")
                res = http.post("/entities", json=body)
                statuses[res.status_code] += 1
                if res.status_code == 201:
                    added.append(body)
        before = _served_entities(server.base, added, relation)  # also fills the cache with their answers
        cache.kill()
        store.kill()  # SIGKILL: no shutdown save; only what the append-only file holds survives
        cache.start()
        store.start()
        time.sleep(max(1.0, 4 * sync_s))  # the sync loop looks again, reconnects
        after = _served_entities(server.base, added, relation)
        extra = _new_entity(entities, "durable")
        res = httpx.post(f"{server.base}/entities", json=extra, timeout=120)
        one_more = res.status_code
        if one_more == 201:
            added.append(extra)
        server.stop()
        fresh.start()
        restarted = _served_entities(fresh.base, added, relation)
        n = len(added)
        ok = statuses.get(201, 0) == entities and one_more == 201 and after["found"] == after["predicted"] == entities and restarted["found"] == restarted["predicted"] == restarted["added"] == n
        out = {
            "phase": "redis restart with entities", "entities": entities, "statuses": {str(k): v for k, v in statuses.items()}, "acknowledged": statuses.get(201, 0),
            "before_restart": before, "after_restart": after, "added_after_restart": one_more, "fresh_server": restarted, "pass": ok,
            "judgement": (f"held: all {n} acknowledged entities served after kill -9 of both Redis and by a fresh server" if ok else
                          f"hole: acknowledged {statuses.get(201, 0)}; after the restart found {after['found']}, answered {after['predicted']}; one more -> {one_more}; fresh server found {restarted['found']} of {n}"),
            "server_exit": fresh.stop(),
        }
        return out
    finally:
        server.stop()
        fresh.stop()
        cache.kill()
        store.kill()


async def _slow_header_client(port: int, stop_at: float, interval: float, idle: bool, outcomes: list[tuple[str, float]]) -> None:
    """One connection: `GET /health` and then one more header line every `interval` s, never
    the blank line that ends them (or, `idle`, nothing at all after connecting); records when
    the server answered or closed it, or that it was still open at `stop_at`."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        outcomes.append((f"connect: {type(exc).__name__}", 0.0))
        return

    async def trickle() -> None:
        if idle:
            return
        writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        j = 0
        while time.monotonic() < stop_at:
            await asyncio.sleep(min(interval, max(0.0, stop_at - time.monotonic())))
            writer.write(f"X-Slow-{j}: 1\r\n".encode())
            await writer.drain()
            j += 1

    sender = asyncio.ensure_future(trickle())
    try:
        data = await asyncio.wait_for(reader.read(1024), max(0.0, stop_at - time.monotonic()))
        outcome = f"answered {_status_of(data.partition(CRLF)[0])}" if data else "closed by server"
    except TimeoutError:
        outcome = "open at end"
    except OSError:
        outcome = "reset by server"
    outcomes.append((outcome, time.monotonic() - t0))
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)  # a write to a closed socket: expected
    writer.close()


def phase_slow_headers(bundle: Path, connections: int = 100, idle: int = 20, interval: float = 10.0, seconds: float = 60.0,
                       max_connections: int | None = None, keepalive: float | None = None, max_stall_ms: float = 1000.0) -> dict:
    """`connections` connections each sending one header line every `interval` s, and `idle`
    connections sending nothing, for up to `seconds`; GET /health on a new connection every
    0.5 s meanwhile. Reports whether and when the server closed them (plain uvicorn never does:
    no header or first-byte timeout; `imf serve` closes a connection whose request head is not
    complete within IMF_KEEPALIVE_S, `keepalive` here; the compose proxy cuts them sooner) and
    whether /health kept answering. Held: /health answered 200 throughout within `max_stall_ms`
    and no connection still open at the end. With `max_connections` (IMF_MAX_CONNECTIONS) below
    the count, new requests get 503: the cap bounds what the server holds, it does not free it."""
    env = {"IMF_SAVE_INDEX": "false"} | ({"IMF_MAX_CONNECTIONS": str(max_connections)} if max_connections else {}) | ({"IMF_KEEPALIVE_S": str(keepalive)} if keepalive else {})
    server = ServerProcess(bundle, env)
    try:
        server.start()
        outcomes: dict[str, list[tuple[str, float]]] = {"slow": [], "idle": []}

        async def attack() -> None:
            stop_at = time.monotonic() + seconds
            await asyncio.gather(*(_slow_header_client(server.port, stop_at, interval, False, outcomes["slow"]) for _ in range(connections)),
                                 *(_slow_header_client(server.port, stop_at, interval, True, outcomes["idle"]) for _ in range(idle)))

        t0 = time.monotonic()
        with HealthProbe(server.base, interval=0.5, fresh=True, timeout=30) as probe:
            asyncio.run(attack())  # returns early when the server has closed every connection
        elapsed = time.monotonic() - t0
        health = probe.summary()
        summary = {kind: {k: v for k, v in sorted(Counter(o for o, _ in rows).items())} for kind, rows in outcomes.items()}
        closed = {kind: [dt for o, dt in rows if o != "open at end"] for kind, rows in outcomes.items()}
        answering = set(health["statuses"]) == {"200"} and (health["max_ms"] or 0) <= max_stall_ms
        still_open = sum(1 for rows in outcomes.values() for o, _ in rows if o == "open at end")
        ok = answering and still_open == 0
        out = {
            "phase": "slow headers", "connections": connections, "idle": idle, "interval_s": interval, "seconds": seconds, "max_connections": max_connections, "keepalive_s": keepalive,
            "slow_outcomes": summary["slow"], "idle_outcomes": summary["idle"],
            "slow_closed_median_s": round(sorted(closed["slow"])[len(closed["slow"]) // 2], 1) if closed["slow"] else None,
            "idle_closed_median_s": round(sorted(closed["idle"])[len(closed["idle"]) // 2], 1) if closed["idle"] else None,
            "open_at_end": still_open, "phase_seconds": round(elapsed, 1),
            "health_statuses": health["statuses"], "health_p99_ms": health["p99_ms"], "health_max_ms": health["max_ms"], "health": health, "pass": ok,
        }
        total = connections + idle
        closed_all = ", ".join(f"{kind} after median {out[kind + '_closed_median_s']} s" for kind in ("slow", "idle") if out[kind + "_closed_median_s"] is not None)
        out["judgement"] = ("held: " if ok else "hole: ") + (f"/health answered throughout (max {health['max_ms']} ms); " if answering else f"/health {health['statuses']} (max {health['max_ms']} ms); ") + (
            f"the server closed all {total} connections ({closed_all})" if still_open == 0 else
            f"{still_open} of {total} connections still open after {elapsed:.0f} s (the server closed {total - still_open})")
        out["server_exit"] = server.stop()
        return out
    finally:
        server.stop()


# ----------------------------------------------------------------------------- report


def table(rows: list[dict], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in rows)


DEFAULT_PHASES = ("mixed", "redis", "overload-wrk", "schema", "bundles", "slow-bodies", "amplification", "entity-flood", "redis-entities", "slow-headers")
HOSTILE = ("slow_bodies", "amplification", "entity_flood", "redis_entities", "slow_headers")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "default")
    ap.add_argument("--phases", default=",".join(DEFAULT_PHASES), help="comma list; also: overload (a Python open-loop generator; on shared cores it cannot offer 4x)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0, help="mixed and redis phases; overload runs half as long")
    ap.add_argument("--examples", type=int, default=150, help="schemathesis examples per operation and mode")
    ap.add_argument("--json", type=Path, default=None)
    g = ap.add_argument_group("hostile clients (defaults: the red-team review's sizes)")
    g.add_argument("--slow-sockets", type=int, default=64, help="slow bodies: keyless raw sockets sending 1 of 100 declared bytes (default: IMF_MAX_PENDING's 64)")
    g.add_argument("--slow-keyed-sockets", type=int, default=64, help="slow bodies: the same, sending the API key")
    g.add_argument("--slow-seconds", type=float, default=20.0, help="slow bodies: how long the keyed client sends /predict every 100 ms")
    g.add_argument("--body-timeout", type=float, default=5.0, help="slow bodies: IMF_BODY_TIMEOUT_S of the server")
    g.add_argument("--max-pending", type=int, default=64, help="slow bodies: IMF_MAX_PENDING of the server")
    g.add_argument("--batch-items", type=int, default=330_000, help="amplification: empty objects in one /predict/batch (990 kB)")
    g.add_argument("--map-keys", type=int, default=90_000, help="amplification: keys of one /entities numeric map (990 kB)")
    g.add_argument("--flood-cap", type=int, default=50, help="entity flood: IMF_MAX_NEW_ENTITIES of the server")
    g.add_argument("--flood-entities", type=int, default=100, help="entity flood: POST /entities sent")
    g.add_argument("--flood-preload", type=int, default=5000, help="entity flood: entities in the file store before the at-scale part (0: skip it)")
    g.add_argument("--flood-scale-adds", type=int, default=20, help="entity flood: entities added to the preloaded store")
    g.add_argument("--durable-entities", type=int, default=20, help="redis-entities: entities added before both Redis are killed")
    g.add_argument("--header-connections", type=int, default=100, help="slow headers: connections sending one header line every --header-interval s")
    g.add_argument("--idle-connections", type=int, default=20, help="slow headers: connections sending nothing")
    g.add_argument("--header-interval", type=float, default=10.0)
    g.add_argument("--header-seconds", type=float, default=60.0)
    g.add_argument("--max-connections", type=int, default=None, help="slow headers: IMF_MAX_CONNECTIONS of the server (default: the server's)")
    g.add_argument("--keepalive", type=float, default=None, help="slow headers: IMF_KEEPALIVE_S of the server (default: the server's)")
    args = ap.parse_args(argv)
    phases = args.phases.split(",")
    results: dict = {"bundle": str(args.bundle), "clients": args.clients, "seconds": args.seconds, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "mixed" in phases:
            results["mixed"] = phase_mixed(args.bundle, args.clients, args.seconds, work)
        if "redis" in phases:
            results["redis"] = phase_redis(args.bundle, args.clients, args.seconds, work)
        if "overload" in phases:
            results["overload"] = phase_overload(args.bundle, args.clients, args.seconds / 2, work)
        if "overload-wrk" in phases:
            results["overload_wrk"] = phase_overload_wrk(args.bundle, args.seconds / 2)
        if "schema" in phases:
            results["schema"] = phase_schema(args.bundle, args.examples)
        if "bundles" in phases:
            results["bundles"] = phase_bundles(args.bundle, work)
        if "slow-bodies" in phases:
            results["slow_bodies"] = phase_slow_bodies(args.bundle, args.slow_sockets, args.slow_seconds, args.body_timeout, args.max_pending, keyed_sockets=args.slow_keyed_sockets)
        if "amplification" in phases:
            results["amplification"] = phase_amplification(args.bundle, work, args.batch_items, args.map_keys)
        if "entity-flood" in phases:
            results["entity_flood"] = phase_entity_flood(args.bundle, work, args.flood_cap, args.flood_entities, preload=args.flood_preload, scale_adds=args.flood_scale_adds)
        if "redis-entities" in phases:
            results["redis_entities"] = phase_redis_entities(args.bundle, work, args.durable_entities)
        if "slow-headers" in phases:
            results["slow_headers"] = phase_slow_headers(args.bundle, args.header_connections, args.idle_connections, args.header_interval, args.header_seconds, args.max_connections, args.keepalive)
    load = [results[p] for p in ("mixed", "redis", "overload", "overload_wrk") if p in results]
    if load:
        print(table(load, ["phase", "requests", "per_s", "5xx", "503", "dropped", "non_json_errors", "p50_ms", "p99_ms", "refusal_p50_ms"]))
    if "redis" in results:
        print(f"redis phase: failed requests {results['redis']['failed']}, cache hits after the last restart {results['redis']['cache_hits_after_last_restart']:.0f}")
    if "overload" in results:
        o = results["overload"]
        print(f"overload: sustained {o['sustained_per_s']}/s, offered {o['offered_per_s']}/s; RSS {o['rss_mb_before']} -> {o['rss_mb_after']} MB; first request after: {o['first_after']} in {o['first_after_ms']} ms")
    if "overload_wrk" in results:
        o = results["overload_wrk"]
        print(f"overload (wrk): sustained {o['sustained_per_s']}/s (p99 {o['sustained_p99_ms']} ms), offered {o['per_s']}/s (target {o['offered_target_per_s']}) on {o['connections']} connections;"
              f" answered {o['answered_per_s']}/s, refused {o['503']}; latency of all responses p50 {o['p50_ms']} ms, p99 {o['p99_ms']} ms, max {o['max_ms']} ms;"
              f" RSS {o['rss_mb_before']} -> {o['rss_mb_after']} MB; first request after: {o['first_after']} in {o['first_after_ms']} ms, first 200 after {o['first_200_after_ms']} ms")
    if "schema" in results:
        s = results["schema"]
        print(f"schemathesis: {s['requests']} requests, statuses {s['statuses']}, 5xx {s['5xx']}")
    if "bundles" in results:
        print(table(results["bundles"], ["bundle", "exit", "names_the_file", "message", "then"]))
    if "slow_bodies" in results:
        o = results["slow_bodies"]
        print(f"slow bodies: {o['sockets']} keyless + {o['keyed_sockets']} keyed sockets; the client's /predict {o['client_statuses']} (p50 {o['client_p50_ms']} ms, p99 {o['client_p99_ms']} ms);")
        for kind in ("keyless", "keyed"):
            k = o[kind]
            print(f"  {kind} slow bodies: {k['outcomes']}, answered after p50 {k['answer_p50_s']} s, max {k['answer_max_s']} s; waiting past the deadline {k['held_past_deadline']}")
    if "amplification" in results:
        print(table(results["amplification"]["rows"], ["request", "request_bytes", "status", "response_bytes", "seconds", "errors_listed", "errors_counted", "health_max_ms", "pass"]))
    if "entity_flood" in results:
        o = results["entity_flood"]
        print(f"entity flood: cap {o['cap']}, sent {o['entities']}: {o['statuses']}, served {o['served']}, stored {o['stored']}; /health max {o['health_max_ms']} ms")
        if "scale" in o:
            c = o["scale"]
            print(f"  at scale: {c['preload']:,} stored ({c['file_mb']} MB), {c['adds']} added: {c['statuses']}, add p50 {c['add_p50_ms']} ms, max {c['add_max_ms']} ms; /health p50 {c['health_p50_ms']} ms, max {c['health_max_ms']} ms")
    if "redis_entities" in results:
        o = results["redis_entities"]
        print(f"redis restart with entities: acknowledged {o['acknowledged']}; after kill -9 of both Redis {o['after_restart']}; one more {o['added_after_restart']}; fresh server {o['fresh_server']}")
    if "slow_headers" in results:
        o = results["slow_headers"]
        print(f"slow headers: slow {o['slow_outcomes']}, idle {o['idle_outcomes']}; /health {o['health_statuses']} (p99 {o['health_p99_ms']} ms, max {o['health_max_ms']} ms)")
    for name in HOSTILE:
        if name in results:
            print(f"{name}: {'PASS' if results[name]['pass'] else 'FAIL'}: {results[name]['judgement']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
