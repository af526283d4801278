"""The dataset loader: the bundled datasets load, and every kind of bad input gets a precise error
that names the file and line (or field), while nothing is written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from model.cli import main as cli_main
from model.kg.dataset import BUILTIN_DATASETS, load_dataset, project_data_dir
from model.errors import DataError, UnknownNameError
from tests.helpers import write_dataset


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_builtin_datasets_load_with_their_recorded_counts(name: str) -> None:
    ds = load_dataset(name)
    meta = json.loads((project_data_dir() / name / "dataset.json").read_text())
    assert ds.num_entities == meta["counts"]["entities"]
    assert ds.num_relations == meta["counts"]["relations"]
    assert [len(ds.train), len(ds.valid), len(ds.test)] == [meta["counts"][s] for s in ("train", "valid", "test")]
    assert ds.default_modalities == meta["default_modalities"]
    assert set(ds.default_modalities) <= set(ds.features)
    for f in ds.features.values():
        assert f.matrix.shape == (ds.num_entities, f.dim)
        assert np.isfinite(f.matrix).all()
        assert 0 < f.coverage <= ds.num_entities
        assert not f.matrix[~f.present].any()  # placeholder rows are zero
    # every split's entities occur in train (the loader's contract)
    in_train = set(ds.train[:, 0]) | set(ds.train[:, 2])
    assert set(ds.valid[:, 0]) | set(ds.valid[:, 2]) | set(ds.test[:, 0]) | set(ds.test[:, 2]) <= in_train
    assert len(ds.fingerprint) == 64


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_builtin_evaluation_splits_share_no_triple_with_train(name: str) -> None:
    """A validation or test triple that is also a training triple rewards memorising (and, on
    the validation split, selects for it); the converters drop them."""
    ds = load_dataset(name, with_features=False)
    train = {tuple(t) for t in ds.train.tolist()}
    for split in ("valid", "test"):
        rows = getattr(ds, split)
        assert len(rows) > 0
        assert not any(tuple(t) in train for t in rows.tolist()), split


def test_converter_drops_evaluation_triples_seen_in_train() -> None:
    from model.kg.builtin import RawKG, _clean

    raw = RawKG(
        name="x", description="", entity_names={}, entity_descriptions={}, relation_names={}, default_modalities=[], sources=[],
        splits={
            "train": [("a", "r", "b"), ("b", "r", "c")],
            "valid": [("a", "r", "b"), ("a", "r", "c"), ("a", "r", "c")],
            "test": [("b", "r", "c"), ("c", "r", "a"), ("a", "r", "z")],
        },
    )
    out = _clean(raw)
    assert out.splits["valid"] == [("a", "r", "c")]
    assert out.splits["test"] == [("c", "r", "a")]
    assert out.cleaning["valid_in_train_dropped"] == 1 and out.cleaning["valid_duplicates_dropped"] == 1
    assert out.cleaning["test_in_train_dropped"] == 1 and out.cleaning["test_unseen_in_train_dropped"] == 1


def test_readable_names_are_loaded() -> None:
    ds = load_dataset("fb15k-237")
    names = dict(zip(ds.entity_ids, ds.entity_names))
    assert names["/m/02mjmr"] == "Barack Obama"


def good(root: Path) -> Path:
    return write_dataset(
        root,
        [("a", "r", "b"), ("b", "r", "c"), ("c", "s", "a")],
        [("a", "s", "c")],
        [("b", "s", "a")],
    )


def test_minimal_dataset_without_vocab_files(tmp_path: Path) -> None:
    ds = load_dataset(good(tmp_path / "ok"))
    assert ds.entity_ids == ["a", "b", "c"] and ds.relation_ids == ["r", "s"]
    assert ds.entity_names == ds.entity_ids
    assert ds.train.tolist() == [[0, 0, 1], [1, 0, 2], [2, 1, 0]]


def test_gzipped_splits_are_read(tmp_path: Path) -> None:
    import gzip

    root = good(tmp_path / "gz")
    data = (root / "train.tsv").read_bytes()
    (root / "train.tsv").unlink()
    (root / "train.tsv.gz").write_bytes(gzip.compress(data))
    assert len(load_dataset(root).train) == 3


def error_of(root: Path) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(root)
    return info.value


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "train.tsv").write_text("a\tr\tb\nb\tr\tc\nc\ts\n")
    err = error_of(root)
    assert err.path.endswith("train.tsv") and err.line == 3
    assert "expected 3 tab-separated columns, found 2" in str(err)


def test_entity_unseen_in_train_names_split_and_line(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "test.tsv").write_text("b\ts\ta\nzed\tr\ta\n")
    err = error_of(root)
    assert err.path.endswith("test.tsv") and err.line == 2
    assert "'zed'" in str(err) and "train" in str(err)


def test_relation_unseen_in_train(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "valid.tsv").write_text("a\tnew_rel\tc\n")
    err = error_of(root)
    assert err.line == 1 and "relation 'new_rel'" in str(err)


def test_duplicate_line_names_both_lines(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "train.tsv").write_text("a\tr\tb\nb\tr\tc\nc\ts\ta\na\tr\tb\n")
    err = error_of(root)
    assert err.line == 4 and "first on line 1" in str(err)


def test_feature_row_count_mismatch(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "features").mkdir()
    np.save(root / "features" / "text.npy", np.ones((3, 4), dtype=np.float32))
    (root / "features" / "text.ids.txt").write_text("a\nb\n")
    err = error_of(root)
    assert err.path.endswith("text.npy") and "3 rows" in str(err) and "2 entities" in str(err)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_name_row_and_entity(tmp_path: Path, bad: float) -> None:
    root = good(tmp_path / "d")
    (root / "features").mkdir()
    m = np.ones((3, 4), dtype=np.float32)
    m[1, 2] = bad
    np.save(root / "features" / "text.npy", m)
    (root / "features" / "text.ids.txt").write_text("a\nb\nc\n")
    err = error_of(root)
    assert err.path.endswith("text.npy") and "row 1 (entity 'b'), column 2" in str(err)


def test_non_finite_values_in_masked_rows_are_allowed(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "features").mkdir()
    m = np.ones((3, 4), dtype=np.float32)
    m[1] = np.nan
    np.save(root / "features" / "text.npy", m)
    np.save(root / "features" / "text.mask.npy", np.array([True, False, True]))
    (root / "features" / "text.ids.txt").write_text("a\nb\nc\n")
    ds = load_dataset(root)
    assert ds.features["text"].present.tolist() == [True, False, True]
    assert not ds.features["text"].matrix[1].any()


def test_feature_ids_must_be_known_entities(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "features").mkdir()
    np.save(root / "features" / "text.npy", np.ones((2, 4), dtype=np.float32))
    (root / "features" / "text.ids.txt").write_text("a\nghost\n")
    err = error_of(root)
    assert err.path.endswith("text.ids.txt") and err.line == 2 and "'ghost'" in str(err)


def test_pickled_feature_file_is_refused(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "features").mkdir()
    np.save(root / "features" / "text.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (root / "features" / "text.ids.txt").write_text("a\n")
    err = error_of(root)
    assert err.path.endswith("text.npy")


def test_unknown_dataset_name_lists_builtins() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_dataset("fb15k-238")
    assert "fb15k-237" in str(info.value)
    assert info.value.suggestions == ["fb15k-237"]


def test_unknown_modality_lists_available() -> None:
    ds = load_dataset("wn9-img", with_features=True)
    with pytest.raises(UnknownNameError) as info:
        ds.select_modalities(["text", "audio"])
    assert "'audio'" in str(info.value) and "visual" in str(info.value)


def test_missing_split_file(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "valid.tsv").unlink()
    assert "valid.tsv" in str(error_of(root))


def test_invalid_utf8(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "train.tsv").write_bytes(b"a\tr\tb\n\xff\xfe\tr\tc\n")
    assert "not valid UTF-8" in str(error_of(root))


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda r: (r / "train.tsv").write_text("a\tr\tb\nb\tr\n"), "train.tsv:2"),
        (lambda r: (r / "test.tsv").write_text("q\tr\ta\n"), "test.tsv:1"),
        (lambda r: (r / "train.tsv").write_text("a\tr\tb\na\tr\tb\nb\ts\ta\nc\tr\ta\n"), "train.tsv:2"),
    ],
)
def test_cli_train_on_bad_data_fails_cleanly_and_writes_nothing(tmp_path: Path, capsys, mutate, expect: str) -> None:
    root = good(tmp_path / "d")
    mutate(root)
    out_parent = tmp_path / "artifacts"
    out_parent.mkdir()
    code = cli_main(["train", "--dataset", str(root), "--out", str(out_parent / "run"), "--epochs", "1", "--dim", "4", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert expect in err and "Traceback" not in err
    assert os.listdir(out_parent) == []


def test_cli_unknown_dataset_and_modality(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert cli_main(["train", "--dataset", "nope", "--out", str(out), "--quiet"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    root = good(tmp_path / "d")
    assert cli_main(["train", "--dataset", str(root), "--out", str(out), "--modalities", "visual", "--quiet"]) == 2
    assert "unknown modality 'visual'" in capsys.readouterr().err
    assert not out.exists()


def test_byte_order_mark_is_ignored_in_every_text_file(tmp_path: Path) -> None:
    """An editor's invisible BOM would otherwise become part of the first id of the file."""
    root = good(tmp_path / "d")
    (root / "entities.tsv").write_text("\ufeffa\tAlpha\nb\tBeta\nc\tGamma\n", encoding="utf-8")
    (root / "relations.tsv").write_text("\ufeffr\tare\ns\tsees\n", encoding="utf-8")
    for split in ("train", "valid", "test"):
        (root / f"{split}.tsv").write_text("\ufeff" + (root / f"{split}.tsv").read_text(encoding="utf-8"), encoding="utf-8")
    ds = load_dataset(root)
    assert ds.entity_ids == ["a", "b", "c"] and ds.entity_names[0] == "Alpha"
    assert ds.relation_ids == ["r", "s"] and ds.train.tolist()[0] == [0, 0, 1]


def test_entity_missing_from_entities_tsv_names_both_files(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "entities.tsv").write_text("a\tAlpha\nb\tBeta\n", encoding="utf-8")  # no c; no relations.tsv
    err = error_of(root)
    assert err.path.endswith("train.tsv") and err.line == 2
    assert f"entity 'c' is not listed in {root / 'entities.tsv'}" in str(err)


def test_relation_missing_from_relations_tsv_names_both_files(tmp_path: Path) -> None:
    root = good(tmp_path / "d")
    (root / "relations.tsv").write_text("r\tare\n", encoding="utf-8")
    err = error_of(root)
    assert err.path.endswith("train.tsv") and err.line == 3
    assert f"relation 's' is not listed in {root / 'relations.tsv'}" in str(err)


def test_missing_builtin_dataset_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from model.kg import dataset

    empty = tmp_path / "empty"
    empty.mkdir()
    # IMF_DATA_DIR set, installed package: point it elsewhere (building needs a clone)
    monkeypatch.setenv("IMF_DATA_DIR", str(empty))
    monkeypatch.setattr(dataset, "in_source_checkout", lambda: False)
    message = str(error_of_name("wn9-img"))
    assert f"IMF_DATA_DIR={empty} holds no wn9-img/: point IMF_DATA_DIR at a folder that holds wn9-img/" in message
    assert "imf data build" not in message
    # installed, no IMF_DATA_DIR (the package's own data/ is empty): IMF_DATA_DIR is the fix
    monkeypatch.delenv("IMF_DATA_DIR")
    monkeypatch.setattr(dataset, "project_data_dir", lambda: empty)
    message = str(error_of_name("wn9-img"))
    assert "set IMF_DATA_DIR to a folder that holds wn9-img/" in message and "imf data build" not in message
    # in a clone: rebuild it
    monkeypatch.setattr(dataset, "in_source_checkout", lambda: True)
    message = str(error_of_name("wn9-img"))
    assert message.endswith("built-in dataset 'wn9-img' is missing; run `imf data build wn9-img`")
    # in a clone with IMF_DATA_DIR pointing at the wrong folder: fix or unset it
    monkeypatch.setenv("IMF_DATA_DIR", str(empty))
    message = str(error_of_name("wn9-img"))
    assert "point IMF_DATA_DIR at a folder that holds wn9-img/, or unset it to use the clone's data/ folder" in message


def test_this_checkout_is_a_clone() -> None:
    from model.kg.dataset import in_source_checkout

    assert in_source_checkout()  # the tests run from the repository, pyproject.toml beside model/


def error_of_name(name: str) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(name)
    return info.value
