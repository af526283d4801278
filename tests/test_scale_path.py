"""The engine's large-graph path, on the small slice bundle with its thresholds lowered: the
softmax normaliser estimated from IVF strata and a uniform sample, float16 entity tables, the
entity tables saved beside the index, and the model's entity rows released after load."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import service.engine as engine
from service.engine import Predictor
from service.index import INDEX_DIR
from service.query import Query


def queries(p: Predictor, n: int, seed: int = 0) -> list[Query]:
    rng = np.random.default_rng(seed)
    test = p.bundle.triples["test"]
    rows = test[rng.choice(len(test), n, replace=False)]
    return [Query(entity=h if i % 2 == 0 else t, relation=r, direction="tail" if i % 2 == 0 else "head", k=10, filter_known=bool(i % 3))
            for i, (h, r, t) in enumerate(rows.tolist())]


@pytest.fixture()
def bundle_copy(slice_bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(slice_bundle, copy)
    return copy


def estimate_and_exact(p: Predictor, qs: list[Query]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The engine's estimated log normalisers for these queries, and the exact ones (the model's
    own chunked logsumexp over every entity)."""
    qv, _ = p._queries([q.entity for q in qs], [p._rel(q) for q in qs])
    known = [p._known_rows(q) for q in qs]
    ids, heads = p._retrieve(qs, qv, known)
    valid = ids >= 0
    cand = torch.from_numpy(np.where(valid, ids, 0))
    logits = {b: torch.einsum("bd,bkd->bk", qv[b], p.tables[b][cand].float()) for b in p.branches}
    return p._log_normalizers(qv, ids, valid, logits, heads), p.model.log_normalizers(qv, p.tables)


@pytest.mark.parametrize("nprobe", [1, 3, 10_000])
def test_stratified_normaliser_is_exact_when_the_samples_hold_every_entity(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch, nprobe: int) -> None:
    """With every member of every list in its stratum's sample and every entity in the uniform
    sample, each stratum's estimate is its exact sum: the estimate must equal the exact
    normaliser, whichever lists the search visits (1, a few, all)."""
    monkeypatch.setattr(engine, "STRATUM_SAMPLE", 10_000)
    monkeypatch.setattr(engine, "NORMALISER_SAMPLE", 10_000)
    p = Predictor.load(bundle_copy, candidates=20, index_kind="ivf", nprobe=nprobe, save_index=False)
    assert p._strata() is not None
    est, exact = estimate_and_exact(p, queries(p, 30))
    for b in p.branches:
        assert est[b].numpy() == pytest.approx(exact[b].numpy(), abs=1e-4)


def test_normaliser_without_lists_is_exact_when_the_sample_holds_every_entity(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "NORMALISER_SAMPLE", 10_000)
    p = Predictor.load(bundle_copy, candidates=20, index_kind="flat", save_index=False)
    assert p._strata() is None
    est, exact = estimate_and_exact(p, queries(p, 30))
    for b in p.branches:
        assert est[b].numpy() == pytest.approx(exact[b].numpy(), abs=1e-4)


def test_stratified_normaliser_with_small_samples_is_close(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples much smaller than the graph (2 members a list, 64 uniform): an estimate, not the
    sum; unbiased per stratum, so its error stays small on average."""
    monkeypatch.setattr(engine, "STRATUM_SAMPLE", 2)
    monkeypatch.setattr(engine, "NORMALISER_SAMPLE", 64)
    p = Predictor.load(bundle_copy, candidates=20, index_kind="ivf", nprobe=3, save_index=False)
    est, exact = estimate_and_exact(p, queries(p, 40))
    errors = torch.cat([(est[b] - exact[b]).abs() for b in p.branches])
    assert float(errors.mean()) < 0.1
    assert float(errors.max()) < 1.0


def test_answers_above_the_threshold_use_the_estimate(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the threshold below the graph's size the engine takes the estimate (exact here: full
    samples) and answers as the exhaustive path does."""
    monkeypatch.setattr(engine, "EXHAUSTIVE_MAX_ENTITIES", 100)
    monkeypatch.setattr(engine, "STRATUM_SAMPLE", 10_000)
    monkeypatch.setattr(engine, "NORMALISER_SAMPLE", 10_000)
    p = Predictor.load(bundle_copy, candidates=10_000, index_kind="ivf", nprobe=10_000, save_index=False)
    p.candidates = p.num_base - 1  # below N: the retrieval path, deep enough to hold every answer
    for q in queries(p, 20):
        got, want = p.predict(q), p.predict_exhaustive(q)
        assert [r.entity for r in got] == [r.entity for r in want]
        assert [r.score for r in got] == pytest.approx([r.score for r in want], rel=1e-4)


def test_float16_tables_answer_as_their_reference_and_close_to_float32(bundle_copy: Path) -> None:
    p16 = Predictor.load(bundle_copy, index_kind="exact", table_dtype="float16", save_index=False)
    p32 = Predictor.load(bundle_copy, index_kind="exact", table_dtype="float32", save_index=False)
    assert all(t.dtype == torch.float16 for t in p16.tables.values())
    assert p16.model.entity_rows_released and not p32.model.entity_rows_released
    assert p16.retrieval != p32.retrieval  # answers differ a little: never one cache entry for both
    overlap = []
    for q in queries(p16, 30, seed=1):
        got, ref = p16.predict(q), p16.predict_reference(q)
        assert [r.entity for r in got] == [r.entity for r in ref]
        assert [r.score for r in got] == pytest.approx([r.score for r in ref], rel=1e-4)
        full = p32.predict(q)
        overlap.append(len({r.entity for r in got} & {r.entity for r in full}) / len(full))
        assert got[0].score == pytest.approx(full[0].score, rel=2e-2)
    assert np.mean(overlap) > 0.9


def test_explain_and_ranks_work_on_float16_tables(bundle_copy: Path) -> None:
    p = Predictor.load(bundle_copy, index_kind="exact", table_dtype="float16", save_index=False)
    q = queries(p, 1, seed=2)[0]
    weights, rows = p.explain(q)
    top = p.predict(q)
    assert [r.entity for r in rows] == [r.entity for r in top]
    for row, ans in zip(rows, top):
        assert row.score == pytest.approx(ans.score, rel=1e-4)
    _, one = p.explain(q, tail=top[3].entity)
    assert one[0].rank == 4


def test_entity_tables_are_saved_beside_the_index_and_read_back(bundle_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = Predictor.load(bundle_copy, candidates=30, index_kind="flat", table_dtype="float16")
    saved = bundle_copy / INDEX_DIR / "tables-float16.bin"
    assert saved.is_file() and (bundle_copy / INDEX_DIR / "tables-float16.json").is_file()
    with caplog.at_level(logging.INFO):
        second = Predictor.load(bundle_copy, candidates=30, index_kind="flat", table_dtype="float16")
    assert "loaded the saved float16 entity tables" in caplog.text
    assert "entity rows not loaded" in caplog.text  # the saved tables checked out: the bundle's rows were never read
    for b in first.branches:
        assert torch.equal(first.tables[b], second.tables[b])
    qs = queries(first, 10, seed=3)
    answers = [first.predict(q) for q in qs]
    assert [second.predict(q) for q in qs] == answers
    # Damaged: refused (never parsed), computed again, the same answers.
    data = bytearray(saved.read_bytes())
    data[100] ^= 0xFF
    saved.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.index"):
        third = Predictor.load(bundle_copy, candidates=30, index_kind="flat", table_dtype="float16")
    assert "checksum mismatch" in caplog.text and str(saved) in caplog.text
    assert [third.predict(q) for q in qs] == answers  # computed from the bundle's rows, loaded after all
    # Another table type is another file: float32 tables are computed, not read as float16.
    p32 = Predictor.load(bundle_copy, candidates=30, index_kind="flat", table_dtype="float32")
    assert all(t.dtype == torch.float32 for t in p32.tables.values())
    assert (bundle_copy / INDEX_DIR / "tables-float32.bin").is_file()


def test_saved_tables_of_another_model_are_not_used(bundle_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    Predictor.load(bundle_copy, candidates=30, index_kind="flat", table_dtype="float16")
    meta = bundle_copy / INDEX_DIR / "tables-float16.json"
    meta.write_text(meta.read_text().replace('"model_fingerprint": "', '"model_fingerprint": "0'))
    with caplog.at_level(logging.INFO, logger="service.tables"):
        p = Predictor.load(bundle_copy, candidates=30, index_kind="flat", table_dtype="float16")
    assert "belong to another model" in caplog.text
    assert p.predict(queries(p, 1)[0])


def test_table_type_names() -> None:
    from service.tables import resolve_dtype

    assert resolve_dtype("auto", 1000) == torch.float32
    assert resolve_dtype("auto", engine.EXHAUSTIVE_MAX_ENTITIES + 1) == torch.float16
    assert resolve_dtype("float16", 10) == torch.float16
    with pytest.raises(ValueError, match="auto, float32 or float16"):
        resolve_dtype("int8", 10)


def test_a_failed_save_leaves_no_temporary_files(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import os

    import service.index as index_mod

    real = os.replace

    def full_disk(src, dst):  # the data written, the rename fails
        if str(dst).endswith("tables-float16.bin"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(index_mod.os, "replace", full_disk)
    with caplog.at_level(logging.INFO, logger="service.engine"):
        p = Predictor.load(bundle_copy, candidates=30, index_kind="flat", table_dtype="float16")
    assert "entity tables not saved" in caplog.text
    folder = bundle_copy / INDEX_DIR
    assert not [f.name for f in folder.iterdir() if ".tmp-" in f.name]
    assert not (folder / "tables-float16.bin").exists()
    assert p.predict(queries(p, 1)[0])


def test_numpy_logsumexp_matches_torch() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(scale=30.0, size=(7, 50))
    x[2] = -np.inf  # a row with nothing in it
    x[3, :45] = -np.inf
    for axis in (None, 0, 1):
        want = torch.logsumexp(torch.from_numpy(x), dim=axis if axis is not None else (0, 1)).numpy()
        np.testing.assert_allclose(engine._lse(x, axis), want, rtol=1e-12)
    assert engine._lse(x[2]) == -np.inf
    assert engine._lse(np.empty(0)) == -np.inf
    assert engine._lse(np.empty((3, 0)), 1).tolist() == [-np.inf] * 3
    assert engine._lse(np.array([1000.0, 1000.0])) == pytest.approx(1000.0 + np.log(2.0))  # no overflow
