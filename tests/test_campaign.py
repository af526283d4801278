"""Short versions of the load and fault campaign (bench/campaign.py) against the real server
process and a real redis-server, so CI guards them: mixed traffic with zero server errors or
dropped connections and every error a JSON body; Redis killed and restarted twice under load
with no failed request and cache hits resuming; damaged bundles refused at start naming the
file; SIGTERM letting in-flight requests finish. Counts and durations are small; nothing here
asserts a latency or a rate (those are the benchmark's)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from bench.campaign import ServerProcess, Traffic, closed_loop, phase_bundles, phase_mixed, phase_redis
from model.bundle.format import load_bundle

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None and not __import__("os").environ.get("CI"), reason="redis-server not installed")


@pytest.mark.slow  # real server processes under load
def test_mixed_traffic_has_no_server_errors(slice_bundle: Path, tmp_path: Path) -> None:
    out = phase_mixed(slice_bundle, clients=6, seconds=6, workdir=tmp_path)
    print(out)
    assert out["requests"] > 30
    assert out["5xx"] == 0 and out["dropped"] == 0 and out["non_json_errors"] == 0, out["examples"]
    codes = set(out["statuses"])
    assert {200, 404, 413, 422} <= codes, codes  # the mix really exercised the error paths


@pytest.mark.slow  # real server processes under load
def test_redis_killed_twice_under_load_fails_no_request(slice_bundle: Path, tmp_path: Path) -> None:
    out = phase_redis(slice_bundle, clients=4, seconds=12, workdir=tmp_path)
    print(out)
    assert out["requests"] > 30 and out["failed"] == 0, out["examples"]
    assert out["cache_hits_after_last_restart"] > 0  # caching resumed once Redis was back


@pytest.mark.slow  # real server processes under load
def test_damaged_bundles_are_refused_naming_the_file(slice_bundle: Path, tmp_path: Path) -> None:
    rows = phase_bundles(slice_bundle, tmp_path)
    print(rows)
    by = {r["bundle"]: r for r in rows}
    for name in ("truncated weights", "flipped byte in entities.tsv", "manifest names ../../etc/passwd"):
        assert by[name]["exit"] != 0 and by[name]["names_the_file"], by[name]
        assert "Traceback" not in by[name]["message"]
    idx = by["tampered FAISS index"]
    assert idx["names_the_file"] and idx["then"] == "rebuilt; /predict 200", idx


@pytest.mark.slow  # real server processes under load
def test_sigterm_lets_in_flight_requests_finish(slice_bundle: Path) -> None:
    server = ServerProcess(slice_bundle, {"IMF_SAVE_INDEX": "false", "IMF_MAX_BATCH": "64", "IMF_SHUTDOWN_TIMEOUT_S": "20"})
    server.start()
    b = load_bundle(slice_bundle, verify=False)
    results: list = []

    def heavy(i: int) -> None:  # a big batch: long enough to be in flight when the signal comes
        qs = [{"head": b.vocab.entity_ids[(i * 64 + j) % len(b.vocab.entity_ids)], "relation": b.vocab.relation_ids[j % len(b.vocab.relation_ids)], "k": 50} for j in range(64)]
        try:
            results.append(httpx.post(f"{server.base}/predict/batch", json={"queries": qs}, timeout=60).status_code)
        except httpx.TransportError as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=heavy, args=(i,)) for i in range(6)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until work is really in flight
            text = httpx.get(f"{server.base}/metrics", timeout=10).text
            if any(line.startswith("imf_pending_jobs ") and float(line.split()[1]) >= 1 for line in text.split("\n")):
                break
            time.sleep(0.01)
        assert server.proc is not None
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        code = server.proc.wait(30)
        elapsed = time.monotonic() - t0
    finally:
        server.stop()
    out = server.output()
    assert results == [200] * 6, (results, out[-2000:])
    assert code in (0, -signal.SIGTERM) and "Finished server process" in out and "Traceback" not in out
    assert elapsed < 25  # bounded by IMF_SHUTDOWN_TIMEOUT_S (20 s) plus start-up slack: a generous bound, not a timing claim
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.base}/health", timeout=2)


def test_traffic_mix_names_are_real(slice_bundle: Path) -> None:
    t = Traffic(slice_bundle)
    b = load_bundle(slice_bundle, verify=False)
    method, path, body = t.valid()
    assert method == "POST" and body["head"] in b.vocab.entity_names and body["relation"] in b.vocab.relation_ids
    assert asyncio.iscoroutinefunction(closed_loop)
