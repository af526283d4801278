"""The holes a red-team review found in the HTTP front of the service, each closed and checked:
slow bodies must not hold admission slots, clients without the key are refused before anything
is read, list and map sizes are counted before items are validated and a 422 stays small, the
Host header is checked, HTML pages carry security headers, and the API docs sit behind the key
and load nothing from elsewhere."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.campaign import phase_slow_bodies
from model.bundle.format import load_bundle
from service.app import create_app
from service.middleware import BodyLimit
from service.settings import Settings
from tests.helpers import wait_ready, with_


@pytest.fixture()
def settings(slice_bundle: Path) -> Settings:
    return Settings(bundle=slice_bundle, candidates=60, max_k=50, max_batch=8, save_index=False)


@pytest.fixture()
def names(slice_bundle: Path) -> dict:
    b = load_bundle(slice_bundle)
    h, r, _ = b.triples["train"][0].tolist()
    return {"head": b.vocab.entity_ids[h], "relation": b.vocab.relation_ids[r]}


# ----------------------------------------------------------------------------- request sizes


def test_a_huge_batch_is_refused_small_and_fast(settings: Settings) -> None:
    """330,000 empty queries once took half a minute and a 56 MB answer: now one error."""
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        body = json.dumps({"queries": [{}] * 100_000}).encode()  # 300 kB, under IMF_MAX_BODY_BYTES
        r = c.post("/predict/batch", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["field"] == "queries" and "at most 8" in err["message"] and "100000" in err["message"]
    assert len(r.content) < 2_000


def test_a_422_lists_at_most_ten_errors_and_counts_them_all(settings: Settings, names: dict) -> None:
    bad = [{"head": "", "relation": "", "k": "x"}] * 8  # 3 errors each, within IMF_MAX_BATCH
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        r = c.post("/predict/batch", json={"queries": bad})
    err = r.json()["error"]
    assert r.status_code == 422 and len(err["details"]) == 10 and err["errors"] == 24


def test_a_huge_numeric_map_is_refused_before_its_values_are_read(settings: Settings) -> None:
    numeric = {f"attribute.{i}": 1.0 for i in range(5_000)}
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        r = c.post("/entities", json={"name": "Ada Lovelace", "numeric": numeric})
    err = r.json()["error"]
    assert r.status_code == 422 and err["field"] == "numeric" and "at most 1000" in err["message"]
    assert len(r.content) < 2_000


# ----------------------------------------------------------------------------- the API key first


def test_a_request_without_the_key_is_refused_before_its_body_is_read(settings: Settings, names: dict) -> None:
    """401, not 413: the key is checked from the headers, before a byte of the body."""
    keyed = with_(settings, api_key="s3cret", max_body_bytes=10_000)
    with TestClient(create_app(keyed)) as c:
        r = c.post("/predict", content=b"{" + b" " * 50_000 + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        wait_ready(c)
        ok = c.post("/predict", json={**names, "k": 2}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200


def test_a_body_that_never_arrives_gets_408_within_the_deadline(settings: Settings) -> None:
    """The body-read deadline, at the ASGI level: a client that sends one byte and stops."""
    sent: list[dict] = []
    reached_app = False

    async def app(scope, receive, send) -> None:
        nonlocal reached_app
        reached_app = True

    async def receive() -> dict:
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(3600)  # the rest never comes
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    middleware = BodyLimit(app, settings=with_(settings, body_timeout_s=0.2))
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-length", b"100")]}
    t0 = time.monotonic()
    asyncio.run(middleware(scope, receive, send))
    waited = time.monotonic() - t0
    start = next(m for m in sent if m.get("type") == "http.response.start")
    body = json.loads(next(m for m in sent if m.get("type") == "http.response.body")["body"])
    assert start["status"] == 408 and body["error"]["type"] == "request_timeout"
    assert not reached_app and waited < 60  # the deadline ended it, not the client


@pytest.mark.slow
def test_slow_bodies_do_not_lock_keyed_clients_out(slice_bundle: Path) -> None:
    """The reproduction, against a real server (bench/campaign.py's slow-bodies phase, once per
    socket): more trickling clients than admission slots, with and without the key, while a
    keyed client asks /predict. Before: the trickling clients held every slot and the keyed
    client got 503 for as long as they stayed. Now every keyless one is refused from its
    headers and every keyed one cut off at the body deadline."""
    out = phase_slow_bodies(slice_bundle, sockets=8, keyed_sockets=8, seconds=3, body_timeout=1, max_pending=4, reconnect=False)
    assert out["client_requests"] >= 10 and out["client_statuses"] == {"200": out["client_requests"]}, out["judgement"]
    assert out["keyless"]["outcomes"] == {"401": 8}, out["keyless"]
    assert out["keyed"]["outcomes"] == {"408": 8}, out["keyed"]


# ----------------------------------------------------------------------------- Host, headers, docs


def test_an_untrusted_host_header_is_refused(settings: Settings) -> None:
    """DNS rebinding: a page on attacker.example resolving to this server cannot read it."""
    strict = with_(settings, trusted_hosts="")  # the default: loopback names and IMF_HOST
    with TestClient(create_app(strict), base_url="http://localhost") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"host": "127.0.0.1:8000"}).status_code == 200
        r = c.get("/", headers={"host": "attacker.example"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_host"
        assert c.get("/health", headers={"host": "attacker.example:8000"}).status_code == 400
    with TestClient(create_app(with_(settings, trusted_hosts="api.example.org")), base_url="http://api.example.org") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"host": "localhost"}).status_code == 400


def test_pages_carry_security_headers(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        page = c.get("/")
        api = c.get("/health")
    assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert api.headers["x-content-type-options"] == "nosniff" and api.headers["x-frame-options"] == "DENY"


def test_api_docs_are_behind_the_key_and_load_nothing_from_elsewhere(settings: Settings) -> None:
    keyed = with_(settings, api_key="s3cret")
    key = {"X-API-Key": "s3cret"}
    with TestClient(create_app(keyed)) as c:
        for path in ("/openapi.json", "/docs", "/docs/assets/swagger-ui-bundle.js"):
            assert c.get(path).status_code == 401, path
        assert c.get("/redoc", headers=key).status_code == 404  # it would load ReDoc from a CDN
        spec = c.get("/openapi.json", headers=key)
        page = c.get("/docs", headers=key)
        assert spec.status_code == 200 and "/predict" in spec.json()["paths"]
        assert page.status_code == 200 and "http://" not in page.text and "https://" not in page.text
        for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
            assert c.get(asset, headers=key).status_code == 200, asset
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200  # open, as before
