"""End to end: the real server process (`python -m service BUNDLE`, uvicorn) on a free port,
spoken to over HTTP; and a property-based run generated from its OpenAPI schema (schemathesis)
that must find no server error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from model.bundle.format import load_bundle
from tests.helpers import free_port, wait_ready

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # a real server process, and schemathesis against it


@pytest.fixture(scope="module")
def live_server(slice_bundle: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "IMF_PORT": str(port),
        "IMF_HOST": "127.0.0.1",
        "IMF_SAVE_INDEX": "false",
        "IMF_MAX_K": "50",
        "IMF_CANDIDATES": "100",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("IMF_REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "service", str(slice_bundle)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, 120, proc=proc)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        out = proc.stdout.read() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit -15)
        assert code in (0, -signal.SIGTERM), out
        assert "Finished server process" in out and "Traceback" not in out, out


def test_real_server_answers_over_http(live_server: str, slice_bundle: Path) -> None:
    b = load_bundle(slice_bundle)
    h, r, t = b.triples["train"][0].tolist()
    with httpx.Client(base_url=live_server, timeout=30) as http:
        assert http.get("/health").json() == {"status": "ok"}
        res = http.post("/predict", json={"head": b.vocab.entity_names[h], "relation": b.vocab.relation_ids[r], "k": 3})
        assert res.status_code == 200 and res.headers["content-type"].startswith("application/json")
        body = res.json()
        assert body["model"] == b.fingerprint and len(body["predictions"]) == 3 and body["cached"] is False
        assert http.post("/predict", json={"head": b.vocab.entity_names[h], "relation": b.vocab.relation_ids[r], "k": 3}).json()["cached"] is True
        exp = http.post("/explain", json={"head": b.vocab.entity_ids[h], "relation": b.vocab.relation_ids[r], "tail": b.vocab.entity_ids[t]}).json()
        assert exp["predictions"][0]["entity"] == b.vocab.entity_ids[t]
        bad = http.post("/predict", json={"head": b.vocab.entity_ids[h], "relation": b.vocab.relation_ids[r], "k": 1000})
        assert bad.status_code == 422 and "error" in bad.json()
        assert "imf_requests_total" in http.get("/metrics").text


def test_no_server_errors_from_generated_requests(live_server: str) -> None:
    """Every operation, positive and negative (schema-violating) data, ~60 cases each."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{live_server}/openapi.json")
    from schemathesis.generation import GenerationMode

    failures: list[str] = []
    checked = 0
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)

            @given(case=strategy)
            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case) -> None:
                nonlocal checked
                response = case.call(base_url=live_server, timeout=30)
                checked += 1
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code}: {response.text[:300]}")
                elif response.status_code >= 400:
                    ctype = response.headers.get("content-type") or [""]
                    ctype = ctype[0] if isinstance(ctype, list) else ctype
                    assert ctype.startswith("application/json"), response.text[:200]
                    assert "error" in response.json()

            try:
                run()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # nothing to violate (no parameters)
    assert checked > 200
    assert failures == [], "\n".join(failures[:10])
