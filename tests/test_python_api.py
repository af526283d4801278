"""The Python API (model/api.py) end to end on the example CSV graph: import, check, train
(sized, from keyword options), evaluate, predict by name, resume; errors as on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from model import api as imf
from model.errors import IMFError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fb-1k"
AWARD_NOMINEE = "/award/award_nominee/award_nominations./award/award_nomination/award_nominee"


@pytest.fixture(scope="module")
def fb1k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("api") / "fb-1k"
    report = imf.import_graph(EXAMPLE / "triples.csv", out, entities=EXAMPLE / "entities.csv", attributes=EXAMPLE / "attributes.csv")
    assert report is not None
    return out


def test_import_check_train_evaluate_predict(fb1k: Path, tmp_path: Path) -> None:
    ds = imf.load_dataset(fb1k)
    assert (ds.num_entities, ds.num_relations) == (1103, 86)
    assert any("no numeric features yet" in w for w in imf.check(fb1k))
    bundle = imf.train(fb1k, tmp_path / "b", modalities=["numeric"], epochs=2, dim=16, progress=False)
    # sized where not given: a small graph's learning rate; given: dim; built on the way: numeric
    training = bundle.manifest["training"]
    assert training["lr"] == 0.01 and training["sources"]["lr"] == "sized"
    assert bundle.model.cfg.dim == 16 and training["sources"]["dim"] == "flag"
    assert (fb1k / "features" / "numeric.npy").is_file()
    assert training["epochs_run"] == 2 and (tmp_path / "b.run" / "checkpoint.pt").is_file()
    report = imf.evaluate(bundle, split="valid")
    assert report["mrr"] == pytest.approx(bundle.manifest["metrics"]["valid"]["mrr"], abs=1e-6)
    rows = imf.predict(bundle, "Ellen Pompeo", AWARD_NOMINEE, k=5)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(set(r) == {"rank", "entity", "name", "score", "known"} for r in rows)
    assert rows[0]["score"] >= rows[-1]["score"] and not any(r["known"] for r in rows)
    # the run goes on from its checkpoint to more epochs
    more = imf.train(None, tmp_path / "b", resume=tmp_path / "b.run", epochs=3, progress=False)
    assert more.manifest["training"]["epochs_run"] == 3


def test_errors_are_the_command_lines(fb1k: Path, tmp_path: Path) -> None:
    with pytest.raises(IMFError, match="unknown training option"):
        imf.train(fb1k, tmp_path / "x", dimension=16)
    with pytest.raises(IMFError, match="split"):
        imf.evaluate(Path(__file__).resolve().parents[1] / "artifacts" / "default", split="train")
