"""Bundle extras (calibration + feature map) and new entities: model.bundle.feature_map, the engine's
added-entity path (checked against exhaustive scoring), and the HTTP API with a real file
store and a real Redis store shared by two app instances."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.bundle.format import CALIBRATION, FEATURE_MAP, load_bundle
from model.pipeline import compact_bundle
from model.errors import BundleError
from model.features.numeric import log_stats, normalise_numeric
from model.bundle.feature_map import FeatureMap, projected
from service.app import create_app
from service.engine import Predictor
from service.query import Query
from service.settings import Settings
from tests.helpers import RedisServer, wait_ready


def test_extras_are_verified_and_carried_by_compaction(extras_bundle: Path, tmp_path: Path) -> None:
    b = load_bundle(extras_bundle)
    assert b.calibration is not None and b.feature_map is not None
    assert b.feature_map.variant in b.feature_map.report["check_valid_mrr"]
    compact = compact_bundle(extras_bundle, tmp_path / "compact")
    c = load_bundle(compact)
    assert c.calibration is not None and c.feature_map is not None and c.extras_fingerprint == b.extras_fingerprint
    bad = tmp_path / "bad"
    shutil.copytree(extras_bundle, bad)
    (bad / CALIBRATION).write_text((bad / CALIBRATION).read_text().replace('"method"', '"methoD"'))
    with pytest.raises(BundleError, match=CALIBRATION):
        load_bundle(bad)
    (bad / CALIBRATION).unlink()
    with pytest.raises(BundleError, match=CALIBRATION):
        load_bundle(bad)
    assert (extras_bundle / FEATURE_MAP).is_file()


def test_numeric_features_of_a_new_entity_match_training_normalisation() -> None:
    values = {"a": {"h": [1.8], "w": [70.0]}, "b": {"h": [1.6]}, "c": {"w": [1e6, 2e6]}}
    attrs = ["h", "w"]
    matrix, ids = normalise_numeric(values, ["a", "b", "c"], attrs)
    raw = np.array([[1.8, 70.0], [1.6, 0.0], [0.0, 1.5e6]])
    present = np.array([[True, True], [True, False], [False, True]])
    mean, std = log_stats(np.sign(raw) * np.log1p(np.abs(raw)), present)
    fmap = FeatureMap("mean", np.zeros((1, 1)), np.zeros(1), numeric_attributes=attrs, numeric_mean=mean, numeric_std=std)
    for i, key in enumerate(ids):
        row = fmap.numeric_features({a: float(np.mean(v)) for a, v in values[key].items()})
        np.testing.assert_allclose(row, matrix[i], rtol=1e-6, atol=1e-6)


def test_embed_uses_the_models_own_projection(extras_bundle: Path, fb15k_slice: Path) -> None:
    from model.kg.dataset import load_dataset

    b = load_bundle(extras_bundle)
    ds = load_dataset(fb15k_slice)
    model, fmap = b.model, b.feature_map
    assert fmap is not None
    ids = np.arange(5)
    feats = {m: ds.features[m].matrix[ids] for m in model.modalities}
    pres = {m: ds.features[m].present[ids] for m in model.modalities}
    rows = fmap.embed(model, feats, pres, "mean")
    for m in model.modalities:
        torch.testing.assert_close(rows[m], projected(model, m, feats[m], pres[m]))
    torch.testing.assert_close(rows["structure"][0], torch.from_numpy(fmap.structure_mean).float())
    # the multimodal row is the model's fusion of the other rows, as for trained entities
    fused = model.entity_fusion([rows["structure"], *(rows[m] for m in model.modalities)])
    torch.testing.assert_close(rows["multimodal"], fused)


def _record(p: Predictor, rng: np.random.Generator, key: str) -> dict:
    import base64

    vec = rng.normal(size=p.model.cfg.modalities["text"]).astype(np.float32)
    vec /= np.linalg.norm(vec)
    return {"id": key, "name": f"Added {key}", "description": "", "numeric": {}, "text_vector": base64.b64encode(vec.tobytes()).decode(), "model": p.bundle.fingerprint}


def test_added_entities_retrieval_path_equals_exhaustive(extras_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(extras_bundle, copy)
    p = Predictor.load(copy, candidates=300, index_kind="flat", save_index=False)  # K' < N: the retrieval path
    rng = np.random.default_rng(0)
    before = p.retrieval
    assert p.added.add_records([_record(p, rng, f"new/{i}") for i in range(3)]) == 3
    assert p.retrieval != before  # cached answers of the old set are never served
    assert p.added.add_records([_record(p, rng, "new/0")]) == 0  # same id: not added twice
    n = p.num_base
    assert p.num_entities == n + 3
    for e in [0, 7, n, n + 2]:  # bundle entities and added ones as query heads
        for direction in ("tail", "head"):
            q = Query(entity=e, relation=1, direction=direction, k=10, filter_known=True)
            fast, slow = p.predict(q), p.predict_exhaustive(q)
            assert [(r.entity, r.rank) for r in fast] == [(r.entity, r.rank) for r in slow]
            # float32 products of other shapes (gathered candidate rows against column tables)
            assert [r.score for r in fast] == pytest.approx([r.score for r in slow], rel=1e-5)
    # an added entity is a candidate answer: its rank in the exhaustive answer is finite
    q = Query(entity=0, relation=1, direction="tail", k=5, filter_known=True)
    _, (e,) = p.explain(q, n + 1)
    assert e.entity == n + 1 and 1 <= e.rank <= n + 3
    assert abs(sum(b["contribution"] for b in e.branches.values()) - e.score) < 1e-9


@pytest.fixture()
def new_client(extras_bundle: Path, tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = Settings(bundle=extras_bundle, save_index=False, allow_new_entities=True, state_dir=tmp_path / "state", entity_sync_s=0.2, max_k=50, candidates=60)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c, settings


ADA = {"name": "Ada Lovelace", "description": "English mathematician and writer, known for her work on the Analytical Engine", "id": "new/ada"}


def test_post_entities_then_query_restart_and_bad_input(new_client: tuple[TestClient, Settings]) -> None:
    c, settings = new_client
    rel = c.get("/relations").json()["relations"][0]["relation"]
    r = c.post("/entities", json=ADA)
    assert r.status_code == 201, r.text
    assert r.json()["entity"] == "new/ada" and r.json()["added"] == 1
    r = c.post("/predict", json={"head": "Ada Lovelace", "relation": rel, "k": 5})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 5
    assert all(0 <= p["probability"] <= 1 for p in r.json()["predictions"])
    assert c.get("/entities", params={"q": "lovelace"}).json()["entities"][0]["entity"] == "new/ada"
    r = c.post("/explain", json={"head": c.get("/entities", params={"q": "a"}).json()["entities"][-1]["entity"], "relation": rel, "tail": "new/ada"})
    assert r.status_code == 200 and r.json()["predictions"][0]["entity"] == "new/ada"
    # bad input: 422 naming the field, nothing added
    for body, field in [
        ({"name": "  "}, "name"),
        ({**ADA, "description": "someone else"}, "id"),  # the id is taken by a different entity
        ({"name": "X", "id": "/m/09c7w0"}, "id"),  # an entity of the model
        ({"name": "X", "description": "y" * settings.max_entity_text}, "description"),
        ({"name": "x" * (settings.max_entity_text + 1)}, "name"),
        ({"name": "X", "numeric": {"people.person.height_meters": 1.8}}, "numeric"),  # this bundle has no numeric statistics
        ({"name": "X", "id": "/m/" + "x" * 3 + "\t"}, "id"),
    ]:
        r = c.post("/entities", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["field"].startswith(field), r.json()
    r = c.post("/entities", content=b'{"name": "X", "numeric": {"a": NaN}}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "numeric" in r.json()["error"]["field"]
    # numbers for a bundle fitted without numeric statistics: the message says how to fit them
    r = c.post("/entities", json={"name": "X", "numeric": {"people.person.height_meters": 1.8}})
    assert "imf bundle extras BUNDLE --numeric-source FILE" in r.json()["error"]["message"], r.text
    assert c.get("/info").json()["new_entities"]["added"] == 1
    # the same request again (a client retrying after a timeout): the entity it added, 200, nothing new
    r = c.post("/entities", json=ADA)
    assert r.status_code == 200 and r.json() == {**r.json(), "entity": "new/ada", "added": 1}, r.text
    assert c.get("/info").json()["new_entities"]["added"] == 1
    # a restart on the same state folder serves it again, under the same id
    with TestClient(create_app(settings)) as c2:
        wait_ready(c2)
        r = c2.post("/predict", json={"head": "new/ada", "relation": rel, "k": 3})
        assert r.status_code == 200 and r.json()["query"]["head"]["name"] == "Ada Lovelace"


def test_retry_after_the_store_write_serves_the_stored_entity(extras_bundle: Path, tmp_path: Path) -> None:
    """A request that stored its record but timed out before serving it is retried: the retry
    finds the record (DuplicateId from the store), answers 200 with it and serves it at once,
    without waiting for the periodic sync (an hour here) and without a second record."""
    import asyncio

    from service.entities import FileStore

    settings = Settings(bundle=extras_bundle, save_index=False, allow_new_entities=True, state_dir=tmp_path / "state", entity_sync_s=3600)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        p = c.app.state.imf.predictor  # type: ignore[attr-defined]
        body = {**ADA, "id": "new/retried"}
        record = p.added.encode_new_entity(body["name"], body["description"], {}, body["id"])
        store = FileStore(settings.state_dir, p.bundle.fingerprint)
        asyncio.run(store.add(record))  # what the first, timed-out try had written
        assert c.get("/entities", params={"q": "new/retried"}).json()["entities"] == []  # not served yet
        r = c.post("/entities", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["entity"] == "new/retried" and r.json()["added"] == 1
        assert c.post("/predict", json={"head": "new/retried", "relation": c.get("/relations").json()["relations"][0]["relation"], "k": 3}).status_code == 200
        assert len(asyncio.run(store.load())) == 1
        r = c.post("/entities", json={**body, "description": "a different entity"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "id"
        assert len(asyncio.run(store.load())) == 1


def test_score_endpoint(new_client: tuple[TestClient, Settings], extras_bundle: Path) -> None:
    c, _ = new_client
    b = load_bundle(extras_bundle)
    h, r, t = b.triples["train"][0].tolist()
    body = {"head": b.vocab.entity_ids[h], "relation": b.vocab.relation_ids[r], "tail": b.vocab.entity_ids[t]}
    s = c.post("/score", json=body).json()
    assert s["known"] is True and s["rank"] >= 1
    assert math.isclose(sum(x["contribution"] for x in s["branches"].values()), s["score"], rel_tol=1e-9)
    assert b.calibration is not None
    assert math.isclose(s["probability"], float(b.calibration.probability(s["score"], r)), rel_tol=1e-12)
    assert c.post("/score", json={**body, "tail": "no such entity zz"}).status_code == 404


def test_adding_is_forbidden_unless_enabled(extras_bundle: Path) -> None:
    with TestClient(create_app(Settings(bundle=extras_bundle, save_index=False))) as c:
        wait_ready(c)
        r = c.post("/entities", json=ADA)
        assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"


def test_state_dir_inside_the_bundle_is_refused(extras_bundle: Path) -> None:
    with pytest.raises(ValueError, match="IMF_STATE_DIR"):
        Settings(bundle=extras_bundle, allow_new_entities=True, state_dir=extras_bundle / "state")


@pytest.mark.redis
def test_redis_store_is_shared_by_replicas(extras_bundle: Path, redis_server: RedisServer) -> None:
    common = {"bundle": extras_bundle, "save_index": False, "allow_new_entities": True, "redis_url": redis_server.url, "entity_sync_s": 0.2}
    with TestClient(create_app(Settings(**common))) as a, TestClient(create_app(Settings(**common))) as b:
        wait_ready(a)
        wait_ready(b)
        rel = a.get("/relations").json()["relations"][0]["relation"]
        before = b.post("/predict", json={"head": "/m/09c7w0", "relation": rel, "k": 3}).json()
        assert a.post("/entities", json={**ADA, "id": "new/shared"}).status_code == 201
        # one id, one record: another entity under it is refused
        assert b.post("/entities", json={**ADA, "id": "new/shared", "name": "Ada Byron"}).status_code == 422
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = b.post("/predict", json={"head": "new/shared", "relation": rel, "k": 3})
            if r.status_code == 200:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        # the same request through the other replica (a retry) is answered with the stored entity
        r = b.post("/entities", json={**ADA, "id": "new/shared"})
        assert r.status_code == 200 and r.json()["entity"] == "new/shared", r.text
        after = b.post("/predict", json={"head": "/m/09c7w0", "relation": rel, "k": 3}).json()
        assert before["cached"] is False and after["cached"] is False  # generation changed the key


def _add_many(args: tuple[str, str, int]) -> None:
    import asyncio

    from service.entities import FileStore

    folder, prefix, count = args
    store = FileStore(Path(folder), "f" * 64)
    for i in range(count):
        asyncio.run(store.add({"id": f"{prefix}/{i}", "name": f"{prefix} {i}"}))


def test_file_store_keeps_every_addition_of_concurrent_processes(tmp_path: Path) -> None:
    """Replicas sharing IMF_STATE_DIR add at the same time: none of their records is lost."""
    import asyncio
    import multiprocessing

    from service.entities import FileStore

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_add_many, [(str(tmp_path), f"p{k}", 15) for k in range(4)])
    records = asyncio.run(FileStore(tmp_path, "f" * 64).load())
    assert sorted(r["id"] for r in records) == sorted(f"p{k}/{i}" for k in range(4) for i in range(15))


def test_bundle_without_feature_map_answers_501_and_adds_nothing(slice_bundle: Path, tmp_path: Path) -> None:
    settings = Settings(bundle=slice_bundle, save_index=False, allow_new_entities=True, state_dir=tmp_path)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        r = c.post("/entities", json=ADA)
        assert r.status_code == 501 and "feature map" in r.json()["error"]["message"], r.text
        assert c.get("/entities", params={"q": "lovelace"}).json()["entities"] == []
    assert not list(tmp_path.glob("entities-*.jsonl"))


def test_numeric_attributes_without_statistics_say_how_to_fit_them() -> None:
    """The shipped bundle's model has a numeric branch; with its feature map's numeric
    statistics taken away (a bundle whose extras were fitted without --numeric-source), numbers
    for a new entity are refused with the command that fits them, and the file it needs."""
    from service.added import AddedEntities
    from service.errors import InvalidRequest

    b = load_bundle(Path(__file__).resolve().parent.parent / "artifacts" / "default")
    assert b.feature_map is not None and "numeric" in b.model.modalities
    b.feature_map.numeric_attributes = []
    added = AddedEntities(b, {})  # check_new_entity reads no table
    added.check_new_entity("X", "", {}, None, max_text=1000)  # no numbers: fine
    with pytest.raises(InvalidRequest) as info:
        added.check_new_entity("X", "", {"people.person.height_meters": 1.8}, None, max_text=1000)
    assert info.value.field == "numeric"
    message = info.value.message
    assert "takes no numeric attributes" in message and "imf bundle extras BUNDLE --numeric-source FILE" in message
    assert "entity<TAB>attribute<TAB>value" in message
