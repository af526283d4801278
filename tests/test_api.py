"""The HTTP API with the real lifespan (`with TestClient(app)`): endpoints, errors, auth, cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.bundle.format import load_bundle
from service.app import create_app
from service.lifespan import default_loader
from service.schemas import BatchResponse, PredictResponse
from service.settings import Settings
from tests.helpers import wait_ready, with_


@pytest.fixture(scope="module")
def settings(slice_bundle: Path) -> Settings:
    return Settings(bundle=slice_bundle, candidates=60, max_k=50, max_batch=8, max_body_bytes=20_000, save_index=False)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def names(slice_bundle: Path) -> dict:
    b = load_bundle(slice_bundle)
    h, r, t = b.triples["train"][0].tolist()
    return {"head_id": b.vocab.entity_ids[h], "head": b.vocab.entity_names[h], "relation": b.vocab.relation_ids[r], "tail_id": b.vocab.entity_ids[t], "tail": b.vocab.entity_names[t]}


def test_predict_by_name_and_id(client: TestClient, names: dict) -> None:
    by_name = client.post("/predict", json={"head": names["head"], "relation": names["relation"], "k": 5})
    assert by_name.status_code == 200, by_name.text
    body = by_name.json()
    assert len(body["model"]) == 64
    assert body["query"]["head"] == {"entity": names["head_id"], "name": names["head"]}
    preds = body["predictions"]
    assert len(preds) == 5 and [p["rank"] for p in preds] == [1, 2, 3, 4, 5]
    assert all(0.0 <= p["score"] <= 1.0 for p in preds)
    assert [p["score"] for p in preds] == sorted((p["score"] for p in preds), reverse=True)
    assert not any(p["known"] for p in preds)  # filter_known defaults to true
    by_id = client.post("/predict", json={"head": names["head_id"], "relation": names["relation"], "k": 5})
    assert by_id.json()["predictions"] == preds
    assert by_id.json()["cached"] is True  # same normalised query: one cache entry


def test_second_identical_request_is_cached(client: TestClient, names: dict) -> None:
    req = {"head": names["head_id"], "relation": names["relation"], "k": 7, "direction": "head"}
    first = client.post("/predict", json=req).json()
    second = client.post("/predict", json=req).json()
    assert first["cached"] is False and second["cached"] is True
    assert first["predictions"] == second["predictions"]


def test_responses_match_their_documented_schema_hit_or_miss(client: TestClient, names: dict) -> None:
    """Answers are spliced from stored bytes and not validated on the way out (service.answers):
    here they are, strictly, against the schema the OpenAPI document gives, for a miss and for a
    hit, one query and a batch; a hit differs from its miss only in "cached"."""
    req = {"head": names["head_id"], "relation": names["relation"], "k": 6, "filter_known": False}
    miss, hit = (client.post("/predict", json=req) for _ in range(2))
    for r in (miss, hit):
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert set(r.json()) == set(PredictResponse.model_fields)
        PredictResponse.model_validate_json(r.content, strict=True)
    assert {**miss.json(), "cached": True} == hit.json() and miss.json()["cached"] is False
    batch = client.post("/predict/batch", json={"queries": [req, {**req, "k": 3}]})
    assert batch.status_code == 200
    parsed = BatchResponse.model_validate_json(batch.content, strict=True)
    assert [r.cached for r in parsed.results] == [True, False]
    assert parsed.results[0].model_dump(mode="json") == hit.json()
    assert parsed.results[1].predictions == parsed.results[0].predictions[:3]


def test_keep_known_flags_known_facts(client: TestClient, names: dict) -> None:
    r = client.post("/predict", json={"head": names["head_id"], "relation": names["relation"], "k": 50, "filter_known": False})
    preds = r.json()["predictions"]
    assert len(preds) == 50
    known = [p for p in preds if p["known"]]
    filtered = client.post("/predict", json={"head": names["head_id"], "relation": names["relation"], "k": 50}).json()["predictions"]
    assert not {p["entity"] for p in known} & {p["entity"] for p in filtered}


def test_explain(client: TestClient, names: dict) -> None:
    r = client.post("/explain", json={"head": names["head"], "relation": names["relation"], "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert sum(body["weights"].values()) == pytest.approx(1.0, abs=1e-6)
    assert set(body["weights"]) == {"structure", "text", "numeric", "multimodal"}
    assert len(body["predictions"]) == 4
    for p in body["predictions"]:
        assert sum(b["contribution"] for b in p["branches"].values()) == pytest.approx(p["score"], abs=1e-9)
        assert all(b["rank"] >= 1 for b in p["branches"].values())
    one = client.post("/explain", json={"head": names["head"], "relation": names["relation"], "tail": names["tail"]}).json()
    assert [p["entity"] for p in one["predictions"]] == [names["tail_id"]]
    assert one["predictions"][0]["known"] is True  # the triple is in train


def test_batch(client: TestClient, names: dict) -> None:
    qs = [{"head": names["head_id"], "relation": names["relation"], "k": 3}, {"head": names["tail_id"], "relation": names["relation"], "k": 2, "direction": "head"}]
    r = client.post("/predict/batch", json={"queries": qs})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x["predictions"]) for x in results] == [3, 2]
    single = client.post("/predict", json=qs[1]).json()
    assert single["predictions"] == results[1]["predictions"]


def test_entities_lookup(client: TestClient, names: dict) -> None:
    word = names["head"].split()[0]
    r = client.get("/entities", params={"q": word, "limit": 5})
    assert r.status_code == 200
    hits = r.json()["entities"]
    assert 1 <= len(hits) <= 5 and all(word.lower() in (h["name"] + h["entity"]).lower() for h in hits)
    # The tiers: the exact name first, then names starting with the query, then containing it.
    full = client.get("/entities", params={"q": names["head"], "limit": 50}).json()["entities"]
    assert full[0]["name"].lower() == names["head"].lower()
    prefix = client.get("/entities", params={"q": names["head"][:3], "limit": 100}).json()["entities"]
    tiers = [0 if h["name"].lower() == names["head"][:3].lower() else 1 if h["name"].lower().startswith(names["head"][:3].lower()) else 2 for h in prefix]
    assert tiers == sorted(tiers) and 1 in tiers
    assert all(names["head"][:3].lower() in (h["name"] + h["entity"]).lower() for h in prefix)
    assert client.get("/entities", params={"q": "zzzzqqq"}).json() == {"entities": []}
    assert client.get("/entities").status_code == 422


def test_unknown_names_are_404_with_suggestions(client: TestClient, names: dict) -> None:
    r = client.post("/predict", json={"head": names["head"] + "x", "relation": names["relation"]})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["type"] == "not_found" and err["field"] == "head" and names["head"] in err["suggestions"]
    r = client.post("/predict", json={"head": names["head"], "relation": "/no/such"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "relation"
    r = client.post("/explain", json={"head": names["head"], "relation": names["relation"], "tail": "Nobody Anywhere"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "tail"
    r = client.post("/predict/batch", json={"queries": [{"head": names["head"], "relation": names["relation"]}, {"head": "Nobody Anywhere", "relation": names["relation"]}]})
    assert r.status_code == 404 and r.json()["error"]["field"] == "queries[1].head"


@pytest.mark.parametrize(
    "body",
    [
        {"head": "x", "relation": "y", "k": 0},
        {"head": "x", "relation": "y", "k": 51},  # above IMF_MAX_K
        {"head": "x", "relation": "y", "k": "10"},  # wrong type: strict
        {"head": "x", "relation": "y", "k": 2.5},
        {"head": "x", "relation": "y", "direction": "sideways"},
        {"head": "x", "relation": "y", "filter_known": "yes"},
        {"relation": "y"},
        {"head": "", "relation": "y"},
        {"head": "x", "relation": "y", "unexpected": 1},
        [],
        "just a string",
    ],
)
def test_invalid_parameters_are_422_json(client: TestClient, body) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] in ("validation_error", "invalid_request") and err["message"]


def test_malformed_json_and_batches(client: TestClient, names: dict) -> None:
    r = client.post("/predict", content=b'{"head": "x", ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"
    assert client.post("/predict/batch", json={"queries": []}).status_code == 422
    many = [{"head": names["head"], "relation": names["relation"]}] * 9  # IMF_MAX_BATCH is 8
    r = client.post("/predict/batch", json={"queries": many})
    assert r.status_code == 422 and r.json()["error"]["field"] == "queries"


def test_oversized_body_is_413_json(client: TestClient) -> None:
    r = client.post("/predict", content=b"{" + b" " * 30_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

    def chunks():  # no Content-Length: the streamed size counts
        for _ in range(30):
            yield b" " * 1000

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = client.get("/predict")
    assert r.status_code == 405 and "error" in r.json()


def test_health_ready_info_metrics(client: TestClient, names: dict) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] is True and ready["cache"]["backend"] == "memory" and ready["cache"]["ok"] is True
    info = client.get("/info").json()
    assert info["index"]["kind"] == "exact" and info["branches"][0] == "structure"  # auto, small graph
    client.post("/predict", json={"head": names["head"], "relation": names["relation"], "k": 3})
    text = client.get("/metrics").text
    assert 'imf_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert "imf_cache_hits_total" in text and "imf_cache_misses_total" in text
    assert "imf_request_seconds_bucket" in text and "imf_ready 1.0" in text


def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/predict", "/predict/batch", "/explain", "/entities", "/health", "/ready", "/metrics"):
        assert path in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_api_key(settings: Settings, names: dict) -> None:
    keyed = with_(settings, api_key="s3cret")
    with TestClient(create_app(keyed)) as c:
        wait_ready(c)
        body = {"head": names["head"], "relation": names["relation"], "k": 2}
        r = c.post("/predict", json=body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert c.post("/predict", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/predict", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/metrics").status_code == 401
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200


def test_not_ready_is_503_until_loaded(settings: Settings, names: dict) -> None:
    gate = threading.Event()

    def slow_loader(s: Settings):
        gate.wait(30)
        return default_loader(s)

    with TestClient(create_app(settings, loader=slow_loader)) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["ready"] is False
        r = c.post("/predict", json={"head": names["head"], "relation": names["relation"]})
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
        gate.set()
        wait_ready(c)
        assert c.post("/predict", json={"head": names["head"], "relation": names["relation"]}).status_code == 200


def test_failed_load_is_reported_not_crashed(settings: Settings, tmp_path: Path) -> None:
    broken = with_(settings, bundle=tmp_path / "missing")
    with TestClient(create_app(broken)) as c:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "failed" not in c.get("/ready").json().get("error", ""):
            time.sleep(0.05)
        r = c.get("/ready")
        # /ready is open to anyone: it says that loading failed, not where or why (the log does)
        assert r.status_code == 503 and r.json()["error"] == "model failed to load; see the server log"
        assert str(tmp_path) not in r.text and "BundleError" not in r.text and r.headers["retry-after"] == "5"
        p = c.post("/predict", json={"head": "a", "relation": "b"})
        assert p.status_code == 503 and str(tmp_path) not in p.text and p.json()["error"]["type"] == "not_ready"


def test_empty_api_key_is_refused_at_start(monkeypatch) -> None:
    for blank in ("", "   "):
        with pytest.raises(ValueError, match="must not be empty"):
            Settings(api_key=blank)
        monkeypatch.setenv("IMF_API_KEY", blank)
        with pytest.raises(ValueError, match="api_key"):
            Settings()


def slow_predictor_app(settings: Settings, delay_s: float, **changes):
    """The real app and engine with every model job made `delay_s` slower (a unit test of
    admission control: the delay stands in for a saturated CPU)."""

    def loader(s: Settings):
        p = default_loader(s)
        real = p.predict_many

        def slow(queries):
            time.sleep(delay_s)
            return real(queries)

        p.predict_many = slow  # type: ignore[method-assign]
        return p

    return create_app(with_(settings, **changes), loader=loader)


def test_overload_is_shed_with_503_json_and_retry_after(settings: Settings, names: dict) -> None:
    app = slow_predictor_app(settings, 0.4, workers=1, max_pending=2, request_timeout_s=30)
    with TestClient(app) as c:
        wait_ready(c)
        results: list = []

        def call(i: int) -> None:
            body = {"head": names["head"], "relation": names["relation"], "k": 1 + i}  # distinct: no cache, no sharing
            results.append(c.post("/predict", json=body))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = sorted(r.status_code for r in results)
        assert len(results) == 8 and set(codes) == {200, 503}, codes
        for r in results:
            if r.status_code == 503:
                assert r.json()["error"]["type"] == "overloaded" and r.headers["retry-after"] == "1"
        assert codes.count(200) >= 2  # what was admitted was answered
        assert "imf_shed_total{reason=\"queue_full\"}" in c.get("/metrics").text
        # and the server recovers at once
        assert c.post("/predict", json={"head": names["head"], "relation": names["relation"], "k": 20}).status_code == 200


def test_a_request_waiting_too_long_gets_503(settings: Settings, names: dict) -> None:
    app = slow_predictor_app(settings, 1.5, request_timeout_s=0.3)
    with TestClient(app) as c:
        wait_ready(c)
        r = c.post("/predict", json={"head": names["head"], "relation": names["relation"], "k": 3})
        assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded" and "0.3s" in r.json()["error"]["message"]
        time.sleep(1.5)  # the job finishes in its thread; pending drains back to zero
        assert c.app.state.imf.pending == 0


def test_settings_fail_fast() -> None:
    with pytest.raises(ValueError, match="port"):
        Settings(port=0)
    with pytest.raises(ValueError, match="redis"):
        Settings(redis_url="http://localhost:6379")
    with pytest.raises(ValueError, match="IMF_MAX_K"):
        Settings(max_k=500, candidates=100)
    with pytest.raises(ValueError, match="batch_size"):
        Settings(batch_size=0)
    with pytest.raises(ValueError, match="batch_wait_ms"):
        Settings(batch_wait_ms=-1)


def test_a_cache_entry_the_service_did_not_write_is_recomputed(client: TestClient, names: dict) -> None:
    """Hits are served as stored bytes, unparsed: an entry that is not an answer (a foreign or
    damaged value under the key) is ignored, the answer computed again and the entry replaced."""
    import asyncio

    from service.query import Query

    state = client.app.state.imf
    p = state.predictor
    q = p.names.resolve(names["head_id"], names["relation"], direction="tail", k=4, filter_known=True)
    key = Query.cache_key(q, p.bundle.fingerprint, p.retrieval)
    for junk in (b"not json", b'{"model": "x"}', b""):
        asyncio.run(state.cache.set_many([(key, junk)], 60))
        r = client.post("/predict", json={"head": names["head_id"], "relation": names["relation"], "k": 4})
        assert r.status_code == 200 and r.json()["cached"] is False
        PredictResponse.model_validate_json(r.content, strict=True)
        again = client.post("/predict", json={"head": names["head_id"], "relation": names["relation"], "k": 4})
        assert again.json()["cached"] is True and again.json()["predictions"] == r.json()["predictions"]
