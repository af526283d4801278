"""The bundle: identical scores after a round trip; corrupt, truncated or mismatched bundles are
refused with a clear error; writes are atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import model.bundle.format as bundle_mod
from model.bundle.format import load_bundle, save_bundle
from model.kg.dataset import load_dataset
from model.errors import BundleError, UnknownNameError
from model.network.imf import IMFConfig
from model.training.config import TrainConfig
from model.training.loop import train


@pytest.fixture()
def trained(tiny_dataset: Path):
    ds = load_dataset(tiny_dataset)
    result = train(TrainConfig(dataset=str(tiny_dataset), epochs=2, batch_size=4), ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=4))
    return result, ds


@pytest.fixture()
def saved(trained, tmp_path: Path) -> Path:
    result, ds = trained
    return save_bundle(tmp_path / "run", result.model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={"epochs": 2}, metrics={"valid": result.valid_metrics})


def test_round_trip_gives_identical_scores(trained, saved: Path) -> None:
    result, ds = trained
    b = load_bundle(saved)
    heads = torch.arange(ds.num_entities)
    rels = torch.arange(ds.num_entities) % (2 * ds.num_relations)
    with torch.no_grad():
        l1, w1, p1 = result.model.eval().score_candidates(heads, rels)
        l2, w2, p2 = b.model.score_candidates(heads, rels)
    assert torch.equal(p1, p2) and torch.equal(w1, w2)
    assert all(torch.equal(l1[k], l2[k]) for k in l1)
    assert b.vocab.entity_ids == ds.entity_ids and b.vocab.entity_names == ds.entity_names
    assert np.array_equal(b.triples["test"], ds.test)
    m = b.manifest
    assert m["format_version"] == 1 and m["dataset"]["fingerprint"] == ds.fingerprint
    assert m["model_fingerprint"] == m["files"]["weights.safetensors"]
    assert m["modalities"] == {"text": {"dim": 5, "coverage": 4}}
    assert m["model_config"]["dim"] == 8


def test_names_and_ids_resolve(saved: Path) -> None:
    b = load_bundle(saved)
    assert b.vocab.entity("a") == 0
    assert b.vocab.entity("Entity B") == 1 and b.vocab.entity("entity b") == 1
    assert b.vocab.relation("likes") == 0
    with pytest.raises(UnknownNameError) as info:
        b.vocab.entity("Entity Q")
    # Every "Entity X" is equally close to "Entity Q": five of them, most-connected first.
    assert len(info.value.suggestions) == 5 and all(x.startswith("Entity ") for x in info.value.suggestions)
    assert b.vocab.entity_names[b.vocab.entity(info.value.suggestions[0])] == info.value.suggestions[0]
    with pytest.raises(UnknownNameError) as info:
        b.vocab.entity("Entity Bb")
    assert info.value.suggestions[0] == "Entity B"
    with pytest.raises(UnknownNameError):
        b.vocab.relation("hates")
    assert b.vocab.search_entities("entity", limit=3) and b.vocab.search_entities("zzz") == []


def test_weights_are_safetensors_not_pickle(saved: Path) -> None:
    head = (saved / "weights.safetensors").read_bytes()[:8]
    n = int.from_bytes(head, "little")
    header = json.loads((saved / "weights.safetensors").read_bytes()[8:8 + n])
    assert "entity.weight" in header


def flip_byte(path: Path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["weights.safetensors", "entities.tsv", "known_triples.safetensors"])
def test_corrupt_file_is_refused(saved: Path, name: str) -> None:
    flip_byte(saved / name)
    with pytest.raises(BundleError, match=f"{name}: checksum mismatch"):
        load_bundle(saved)


def test_truncated_weights_are_refused(saved: Path) -> None:
    w = saved / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(saved)
    with pytest.raises(BundleError, match="cannot read safetensors"):
        load_bundle(saved, verify=False)


def test_missing_file_and_manifest(saved: Path, tmp_path: Path) -> None:
    (saved / "relations.tsv").unlink()
    with pytest.raises(BundleError, match="relations.tsv: missing"):
        load_bundle(saved)
    (saved / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(saved)
    with pytest.raises(BundleError, match="no such bundle"):
        load_bundle(tmp_path / "nowhere")


def edit_manifest(path: Path, fn) -> None:
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_format_version_and_config_mismatch(saved: Path) -> None:
    edit_manifest(saved, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        load_bundle(saved)
    edit_manifest(saved, lambda m: m.update(format_version=1))
    edit_manifest(saved, lambda m: m["model_config"].update(dim=16))
    with pytest.raises(BundleError, match="does not match model_config"):
        load_bundle(saved)
    edit_manifest(saved, lambda m: m["model_config"].update(dim=8, decision_fusion="bogus"))
    with pytest.raises(BundleError, match="invalid model_config"):
        load_bundle(saved)


def test_fingerprint_must_match_weights(saved: Path) -> None:
    edit_manifest(saved, lambda m: m.update(model_fingerprint="0" * 64))
    with pytest.raises(BundleError, match="model_fingerprint"):
        load_bundle(saved)


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/hostname", "sub/../../outside.txt", "..\\outside.txt", "link.txt", ""])
def test_manifest_cannot_name_files_outside_the_bundle(saved: Path, name: str) -> None:
    outside = saved.parent / "outside.txt"
    outside.write_text("secret")
    (saved / "link.txt").symlink_to(outside)
    edit_manifest(saved, lambda m: m["files"].update({name: "0" * 64}))
    with pytest.raises(BundleError, match="outside the bundle|invalid file name") as info:
        load_bundle(saved)
    assert "manifest.json" in str(info.value)


def test_vocabulary_names_round_trip_any_character(trained, tmp_path: Path) -> None:
    result, ds = trained
    odd = ["tab\there", "new\nline", "cr\rhere back\\slash \\t", "ls\u2028ps\u2029", "nel\x85fs\x1c\x1d\x1e vt\x0bff\x0c", "  spaced ünï 東京 "]
    assert len(odd) == ds.num_entities
    ds.entity_names[:] = odd
    ds.entity_descriptions[0] = "a\nmulti-line\tdescription\u2028"
    out = save_bundle(tmp_path / "odd", result.model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={}, metrics={})
    b = load_bundle(out)
    assert b.vocab.entity_names == ds.entity_names and b.vocab.entity_descriptions == ds.entity_descriptions
    assert b.vocab.entity("new\nline") == 1
    assert len((out / "entities.tsv").read_text(encoding="utf-8").split("\n")) == ds.num_entities + 1


def test_corrupt_manifest_json(saved: Path) -> None:
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupt JSON"):
        load_bundle(saved)


def test_interrupted_write_leaves_nothing(trained, tmp_path: Path, monkeypatch) -> None:
    result, ds = trained
    real = bundle_mod.save_file
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after the weights, while writing the known triples
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle_mod, "save_file", failing)
    (tmp_path / "artifacts").mkdir()
    with pytest.raises(OSError, match="disk full"):
        save_bundle(tmp_path / "artifacts" / "run", result.model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={}, metrics={})
    assert os.listdir(tmp_path / "artifacts") == []


def test_existing_bundle_needs_overwrite(trained, saved: Path) -> None:
    result, ds = trained
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(saved, result.model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={}, metrics={})
    before = load_bundle(saved).fingerprint
    with torch.no_grad():
        result.model.entity.weight.add_(1.0)
    save_bundle(saved, result.model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={}, metrics={}, overwrite=True)
    assert load_bundle(saved).fingerprint != before
    assert [n for n in os.listdir(saved.parent) if "run" in n] == ["run"]  # no temp or old copies left


def test_bundle_is_readable_by_others(saved: Path) -> None:
    import stat

    mode = saved.stat().st_mode
    assert mode & stat.S_IROTH and mode & stat.S_IXOTH  # not mkdtemp's 0700
    assert (saved / "weights.safetensors").stat().st_mode & stat.S_IROTH


def test_unreadable_file_is_a_clear_error(saved: Path, monkeypatch) -> None:
    def denied(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(bundle_mod, "sha256_file", denied)
    with pytest.raises(BundleError, match="weights.safetensors: cannot read .Permission denied.; check the permissions"):
        load_bundle(saved)


def test_a_short_vocabulary_line_is_reported_by_number(saved: Path) -> None:
    """The unescaped fast path still checks every line: a line without its name column names
    its line number."""
    path = saved / "entities.tsv"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[2] = lines[2].split("\t")[0]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(BundleError, match=r"entities.tsv:3: expected at least 2 tab-separated columns"):
        bundle_mod._read_tsv(path, 2, 3, escaped=True)


def test_loaded_weights_are_the_saved_ones_and_owned(trained, saved: Path) -> None:
    """The model is built on the meta device and takes the file's tensors: every tensor equals
    the trained one, none is left on the meta device, and none shares the file's mapping (a copy
    the model owns: a later change of the file cannot reach it)."""
    result, _ = trained
    b = load_bundle(saved)
    want = result.model.compacted().state_dict() if b.model.cfg.stored_tables else result.model.state_dict()
    got = b.model.state_dict()
    assert set(got) == set(want)
    for k, v in got.items():
        assert not v.is_meta, k
        assert torch.allclose(v.float(), want[k].float(), atol=float(want[k].float().abs().max()) / 100 + 1e-6), k
    weights = b.model.entity.weight
    weights.data[0, 0] += 1.0  # writable memory of its own
    assert not torch.equal(load_bundle(saved).model.entity.weight[0], weights[0])


@pytest.mark.parametrize("text", ["a\tA\t\nb\tB\tdesc\n", "a\tA\nb\tB\n", "a\tA\nb\tB\tdesc\n", "a\tA\tx\\ty\nb\tB\n", "a\tA\r\nb\tB\r\n", "a\tA\tdesc\tmore\n", "a\tA", ""])
def test_vocabulary_columns_are_read_as_line_by_line(tmp_path: Path, text: str) -> None:
    """The whole-text fast path and the line-by-line loop read the same columns (ragged lines,
    escapes, Windows line ends, extra columns, no final newline, empty)."""
    from model.files import decode_field, records

    path = tmp_path / "v.tsv"
    path.write_bytes(text.encode())
    want: list[list[str]] = [[], [], []]
    for _, line in records(text):
        cols = line.split("\t")
        for j in range(3):
            want[j].append(decode_field(cols[j]) if j < len(cols) else "")
    assert bundle_mod._read_tsv(path, 2, 3, escaped=True) == want


def test_a_bundle_loads_without_its_entity_rows(saved: Path) -> None:
    """entity_rows=False: every other tensor as in a full load, the per-entity ones empty and
    never read, entity_tables refused; the file is still verified whole."""
    from model.network.imf import IMF

    full, lean = load_bundle(saved), load_bundle(saved, entity_rows=False)
    rows = [k for k in full.model.state_dict() if k.startswith(IMF.ENTITY_ROW_PREFIXES)]
    assert rows
    for k, v in lean.model.state_dict().items():
        assert not v.is_meta, k
        if k in rows:
            assert v.shape[0] == 0, k
        else:
            assert torch.equal(v, full.model.state_dict()[k]), k
    with pytest.raises(RuntimeError, match="released"):
        lean.model.entity_tables()
    data = bytearray((saved / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (saved / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(saved, entity_rows=False)
