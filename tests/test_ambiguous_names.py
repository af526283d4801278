"""Names several entities share: an error listing the candidates, never a silent pick.

FB15k-237 (the shipped bundle, artifacts/default) has 230 such names; "Chicago" is three
entities: the city /m/01_d4, the 2002 film /m/01cmp9 and the band /m/01vrwfv. Ids always
resolve directly. Checked at every layer: the vocabulary (model.kg.vocab), `imf predict`, and
the HTTP API (409 with the candidates on /predict, /predict/batch, /explain, /score, names of
added entities included), and the explorer page in a real browser.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.bundle.format import load_bundle
from model.errors import MAX_CANDIDATES, AmbiguousNameError, IMFError, UnknownNameError
from model.kg.vocab import Vocabulary
from service.app import create_app
from service.settings import Settings
from tests.helpers import wait_ready

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "artifacts" / "default"
CHICAGO = {"/m/01_d4", "/m/01cmp9", "/m/01vrwfv"}  # city, 2002 film, band
CITY, FILM = "/m/01_d4", "/m/01cmp9"
CONTAINS = "/location/location/contains"
GENRE = "/film/film/genre"


def shared_names(path: Path) -> dict[str, list[str]]:
    """Lower-cased name -> ids, for the names of entities.tsv that several entities share."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        eid, name = line.split("\t")[:2]
        by_name[name.strip().lower()].append(eid)
    return {n: ids for n, ids in by_name.items() if len(ids) > 1}


# ----------------------------------------------------------------------------- vocabulary


def small_vocab() -> Vocabulary:
    return Vocabulary(
        entity_ids=["e0", "e1", "e2", "e3", "e4"],
        entity_names=["Springfield", "springfield ", "Shelbyville", "Springfield", "e1"],
        entity_descriptions=["town in Oregon", "", "town", "town in Illinois", "named like an id"],
        relation_ids=["r0", "r1", "r2"],
        relation_names=["type", "Type", "part of"],
        entity_weights=np.array([5, 1, 3, 9, 0]),
    )


def test_a_shared_name_lists_its_entities_most_connected_first() -> None:
    v = small_vocab()
    with pytest.raises(AmbiguousNameError) as info:
        v.entity("  SPRINGFIELD")  # case and surrounding blanks do not count, on either side
    exc = info.value
    assert isinstance(exc, IMFError) and not isinstance(exc, UnknownNameError)
    assert [c.id for c in exc.candidates] == ["e3", "e0", "e1"]  # by training triples: 9, 5, 1
    assert [c.description for c in exc.candidates] == ["town in Illinois", "town in Oregon", ""]
    assert exc.total == 3 and exc.kind == "entity"
    assert "e3" in str(exc) and "town in Illinois" in str(exc) and "3 entities" in str(exc)
    assert v.entities_named("springfield") == [3, 0, 1]


def test_ids_and_unique_names_resolve_directly() -> None:
    v = small_vocab()
    assert [v.entity(e) for e in ("e0", "e1", "e3")] == [0, 1, 3]  # ids of entities whose name is shared
    assert v.entity("e1") == 1  # an id beats entity e4, whose name is "e1"
    assert v.entity("shelbyville") == 2
    with pytest.raises(UnknownNameError) as info:
        v.entity("Springfeld")
    assert info.value.suggestions and info.value.suggestions[0] == "Springfield"


def test_a_shared_relation_name_is_ambiguous_too() -> None:
    v = small_vocab()
    assert v.relation("r1") == 1 and v.relation("part of") == 2
    with pytest.raises(AmbiguousNameError) as info:
        v.relation("type")
    assert [c.id for c in info.value.candidates] == ["r0", "r1"] and info.value.kind == "relation"


def test_many_candidates_are_capped_and_counted() -> None:
    n = MAX_CANDIDATES + 7
    v = Vocabulary([f"x{i}" for i in range(n)], ["Unknown"] * n, [""] * n, ["r"], ["r"], np.arange(n, dtype=float))
    with pytest.raises(AmbiguousNameError) as info:
        v.entity("unknown")
    assert len(info.value.candidates) == MAX_CANDIDATES and info.value.total == n
    assert info.value.candidates[0].id == f"x{n - 1}"  # the most connected first
    assert f"{n} entities" in str(info.value) and f"and {n - 5} more" in str(info.value)


def test_every_shared_fb15k_237_name_is_ambiguous_in_the_shipped_bundle() -> None:
    shared = shared_names(DEFAULT / "entities.tsv")
    assert len(shared) >= 100 and set(shared["chicago"]) == CHICAGO
    vocab = load_bundle(DEFAULT).vocab
    for name, ids in shared.items():
        with pytest.raises(AmbiguousNameError) as info:
            vocab.entity(name)
        assert {c.id for c in info.value.candidates} == set(ids), name
        for eid in ids:
            assert vocab.entity_ids[vocab.entity(eid)] == eid
    with pytest.raises(AmbiguousNameError) as info:
        vocab.entity("Chicago")
    film = next(c for c in info.value.candidates if c.id == FILM)
    assert film.name == "Chicago" and "film" in film.description
    assert vocab.entity_ids[vocab.entity("Barack Obama")] == "/m/02mjmr"  # a name only one has


# ----------------------------------------------------------------------------- imf predict


def test_cli_predict_lists_the_candidates_and_exits_2(capsys) -> None:
    from model.cli import main as cli_main

    capsys.readouterr()
    assert cli_main(["predict", str(DEFAULT), "--head", "chicago", "--relation", CONTAINS, "-k", "3"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert "'chicago' is ambiguous" in lines[0] and "3 entities" in lines[0]
    assert len(lines) == 4
    listed = {line.split()[0] for line in lines[1:]}
    assert listed == CHICAGO
    assert all("Chicago" in line for line in lines[1:])
    band = next(line for line in lines[1:] if line.split()[0] == "/m/01vrwfv")
    assert "rock band" in band
    assert all(len(line) < 160 for line in lines[1:])  # descriptions cut short

    assert cli_main(["predict", str(DEFAULT), "--head", "Chicago", "--relation", GENRE, "-k", "2", "--json"]) == 2
    out, _ = capsys.readouterr()
    body = json.loads(out)
    assert body["error"] == "ambiguous_name" and {c["id"] for c in body["candidates"]} == CHICAGO and body["total"] == 3


def test_cli_predict_shows_ids_beside_names(capsys) -> None:
    from model.cli import main as cli_main

    capsys.readouterr()
    assert cli_main(["predict", str(DEFAULT), "--head", FILM, "--relation", GENRE, "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"(Chicago ({FILM}), {GENRE}, ?)")
    assert len(lines) == 4 and all(line.rstrip().endswith(")") and "(/m/" in line for line in lines[1:])
    assert cli_main(["predict", str(DEFAULT), "--head", FILM, "--relation", GENRE, "--direction", "head", "-k", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"(?, {GENRE}, Chicago ({FILM}))")


# ----------------------------------------------------------------------------- HTTP


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(bundle=DEFAULT, save_index=False))) as c:
        wait_ready(c)
        yield c


def assert_ambiguous(res, field: str, ids: set[str]) -> list[dict]:
    assert res.status_code == 409, res.text
    err = res.json()["error"]
    assert err["type"] == "ambiguous_name" and err["field"] == field
    assert {c["id"] for c in err["candidates"]} == ids
    assert all(set(c) == {"id", "name", "description"} for c in err["candidates"])
    assert "ambiguous" in err["message"]
    return err["candidates"]


def test_predict_with_a_shared_name_is_409_with_the_candidates(client: TestClient) -> None:
    cands = assert_ambiguous(client.post("/predict", json={"head": "Chicago", "relation": CONTAINS}), "head", CHICAGO)
    assert cands[0]["id"] == CITY  # the most connected first
    assert all(c["name"] == "Chicago" and c["description"] for c in cands)
    # asking again with a candidate's id answers about that one
    r = client.post("/predict", json={"head": FILM, "relation": GENRE, "k": 3})
    assert r.status_code == 200 and r.json()["query"]["head"] == {"entity": FILM, "name": "Chicago"}
    r = client.post("/predict", json={"head": "Barack Obama", "relation": "/people/person/nationality", "k": 1})
    assert r.status_code == 200  # a name only one entity has still resolves


def test_batch_reports_the_ambiguous_query_like_an_unknown_one(client: TestClient) -> None:
    qs = [{"head": "Barack Obama", "relation": "/people/person/nationality"}, {"head": "chicago", "relation": CONTAINS}]
    r = client.post("/predict/batch", json={"queries": qs})
    assert_ambiguous(r, "queries[1].head", CHICAGO)
    assert r.json()["error"]["message"].startswith("queries[1]: ")
    qs[1]["head"] = CITY
    assert client.post("/predict/batch", json={"queries": qs}).status_code == 200


def test_explain_and_score_refuse_a_shared_head_or_tail(client: TestClient) -> None:
    assert_ambiguous(client.post("/explain", json={"head": "Chicago", "relation": GENRE}), "head", CHICAGO)
    r = client.post("/explain", json={"head": "Illinois", "relation": CONTAINS, "tail": "Chicago"})
    assert_ambiguous(r, "tail", CHICAGO)
    r = client.post("/score", json={"head": "Illinois", "relation": CONTAINS, "tail": "Chicago"})
    assert_ambiguous(r, "tail", CHICAGO)
    r = client.post("/score", json={"head": "Illinois", "relation": CONTAINS, "tail": CITY})
    assert r.status_code == 200 and r.json()["tail"] == {"entity": CITY, "name": "Chicago"}


def test_openapi_documents_the_409(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/predict", "/predict/batch", "/explain", "/score"):
        assert "409" in paths[path]["post"]["responses"], path


def test_names_of_added_entities_count(tmp_path: Path) -> None:
    """An added entity named like a bundle entity (or like another added one) makes the name
    ambiguous; its id still resolves. Needs the text encoder (the `encoder` extra)."""
    settings = Settings(bundle=DEFAULT, save_index=False, allow_new_entities=True, state_dir=tmp_path / "state")
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        rel = "/people/person/nationality"
        assert c.post("/predict", json={"head": "Barack Obama", "relation": rel}).status_code == 200
        r = c.post("/entities", json={"id": "new/obama-2", "name": "Barack Obama", "description": "a namesake, added at run time"})
        assert r.status_code == 201, r.text
        cands = assert_ambiguous(c.post("/predict", json={"head": "barack obama", "relation": rel}), "head", {"/m/02mjmr", "new/obama-2"})
        assert cands[-1] == {"id": "new/obama-2", "name": "Barack Obama", "description": "a namesake, added at run time"}  # the bundle's first
        assert c.post("/predict", json={"head": "new/obama-2", "relation": rel}).status_code == 200
        assert c.post("/predict", json={"head": "/m/02mjmr", "relation": rel}).status_code == 200
        # two added entities sharing a name no bundle entity has
        for i in (1, 2):
            assert c.post("/entities", json={"id": f"new/ada-{i}", "name": "Ada Lovelace"}).status_code == 201
        assert_ambiguous(c.post("/explain", json={"head": "Ada Lovelace", "relation": rel}), "head", {"new/ada-1", "new/ada-2"})
        # an added entity named like a shared bundle name joins its candidates
        assert c.post("/entities", json={"id": "new/chicago", "name": "Chicago", "description": "a fourth one"}).status_code == 201
        assert_ambiguous(c.post("/predict", json={"head": "Chicago", "relation": GENRE}), "head", CHICAGO | {"new/chicago"})


# ----------------------------------------------------------------------------- explorer


@pytest.mark.slow  # a real server and a headless browser
def test_explorer_lists_the_candidates_and_asks_again_by_id() -> None:
    import threading

    import uvicorn

    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.helpers import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(bundle=DEFAULT, save_index=False)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,900"):
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        wait_ready(f"http://127.0.0.1:{port}", 120)
        wait = WebDriverWait(browser, 60)
        browser.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: len(Select(d.find_element(By.ID, "relation")).options) > 200)
        entity = browser.find_element(By.ID, "entity")
        entity.send_keys("Chicago")
        Select(browser.find_element(By.ID, "relation")).select_by_value(GENRE)
        browser.find_element(By.ID, "ask").click()
        err = wait.until(ec.visibility_of_element_located((By.ID, "error")))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#candidates a.candidate")) == 3)
        assert "several entities" in err.text and "2002 Musical film" in err.text
        links = {a.get_attribute("data-entity"): a for a in browser.find_elements(By.CSS_SELECTOR, "#candidates a.candidate")}
        assert set(links) == CHICAGO
        links[FILM].click()  # asks again with the film's id
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == 10)
        assert entity.get_attribute("value") == FILM
        assert not browser.find_element(By.ID, "error").is_displayed()
        assert "Chicago" in browser.find_element(By.ID, "status").text
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(30)
