"""The engine without HTTP: retrieval + exact rescoring against exhaustive full-model scoring,
known-triple filtering, explanations, index persistence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from service.engine import Predictor
from service.query import Query
from service.errors import InvalidRequest, NotFound
from service.index import INDEX_DIR, CandidateIndex


@pytest.fixture(scope="module")
def predictor(slice_bundle: Path, tmp_path_factory) -> Predictor:
    copy = tmp_path_factory.mktemp("engine") / "bundle"
    shutil.copytree(slice_bundle, copy)
    return Predictor.load(copy, candidates=50, index_kind="flat")  # the FAISS retrieval path


def queries(p: Predictor, n: int, seed: int) -> list[Query]:
    rng = np.random.default_rng(seed)
    test = p.bundle.triples["test"]
    rows = test[rng.choice(len(test), n, replace=False)]
    out = []
    for i, (h, r, t) in enumerate(rows.tolist()):
        direction = "tail" if i % 2 == 0 else "head"
        out.append(Query(entity=h if direction == "tail" else t, relation=r, direction=direction, k=10, filter_known=bool(i % 3)))
    return out


def exhaustive_reference(p: Predictor, q: Query) -> list[tuple[int, float, bool]]:
    """Score every entity one at a time with the model's own candidate scoring (slow)."""
    rel = q.relation if q.direction == "tail" else q.relation + p.num_relations
    with torch.no_grad():
        _, _, pr = p.model.score_candidates(torch.tensor([q.entity]), torch.tensor([rel]), torch.arange(p.num_entities)[None], tables=p.tables)
    known = set(p.bundle.known.answers_of(q.entity, rel).tolist())
    order = sorted(range(p.num_entities), key=lambda e: (-float(pr[0, e]), e))
    if q.filter_known:
        order = [e for e in order if e not in known]
    return [(e, float(pr[0, e]), e in known) for e in order[: q.k]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_depth_retrieval_equals_exhaustive_scoring(predictor: Predictor, seed: int) -> None:
    full = Predictor(predictor.bundle, predictor.index, predictor.tables, candidates=predictor.num_entities, load_seconds=0)
    for q in queries(full, 12, seed):
        got = full.predict(q)
        ref = exhaustive_reference(full, q)
        assert [r.entity for r in got] == [e for e, _, _ in ref]
        assert [r.score for r in got] == pytest.approx([s for _, s, _ in ref], rel=1e-4)  # float32 logits of two kernels: softmax turns their absolute error into relative error
        assert [r.known for r in got] == [k for _, _, k in ref]
        assert [r.rank for r in got] == list(range(1, len(ref) + 1))
        # and the engine's own exhaustive path agrees too
        assert [r.entity for r in full.predict_exhaustive(q)] == [e for e, _, _ in ref]


def test_exact_mode_scores_every_entity(predictor: Predictor, slice_bundle: Path) -> None:
    exact = Predictor.load(slice_bundle, index_kind="auto", save_index=False)  # small graph: auto = exact
    assert exact.index is None and exact.index_kind == "exact"
    for q in queries(exact, 12, 4):
        got = exact.predict(q)
        ref = exhaustive_reference(exact, q)
        assert [r.entity for r in got] == [e for e, _, _ in ref]
        assert [r.known for r in got] == [k for _, _, k in ref]
    assert exact.predict_many(queries(exact, 5, 6))  # batches too


def test_filtering_never_returns_fewer_than_k(predictor: Predictor) -> None:
    bundle = predictor.bundle
    # the query with the most known answers
    keys = bundle.known.keys
    counts = np.diff(bundle.known.offsets)
    row = int(np.argmax(counts))
    e, rel = int(keys[row] // (2 * predictor.num_relations)), int(keys[row] % (2 * predictor.num_relations))
    direction = "tail" if rel < predictor.num_relations else "head"
    base = rel % predictor.num_relations
    n_known = int(counts[row])
    assert n_known > 20  # a hub: more known answers than K' would leave room for without the fix
    small = Predictor(bundle, predictor.index, predictor.tables, candidates=10, load_seconds=0)
    got = small.predict(Query(e, base, direction, k=10, filter_known=True))
    assert len(got) == 10 and not any(r.known for r in got)
    kept = small.predict(Query(e, base, direction, k=10, filter_known=False))
    known = set(bundle.known.answers_of(e, rel).tolist())
    assert [r.known for r in kept] == [r.entity in known for r in kept]
    flagged = small.predict(Query(e, base, direction, k=predictor.num_entities, filter_known=False))
    assert len(flagged) == predictor.num_entities and sum(r.known for r in flagged) == n_known
    everything = small.predict(Query(e, base, direction, k=predictor.num_entities, filter_known=True))
    assert len(everything) == predictor.num_entities - n_known  # every candidate that remains


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_predict_many_equals_one_by_one_at_the_default_depth(predictor: Predictor, kind: str) -> None:
    # A query's answer must not depend on the batch it came in (it is cached as its own): each
    # query searches to its own depth, whatever the others in its batch need. K'=50 < N here,
    # so retrieval is really used; queries mix directions, filters, k and hub entities.
    index = predictor.index if kind == "flat" else CandidateIndex.build([predictor.tables[b].numpy() for b in predictor.branches], kind, nprobe=4)
    p = Predictor(predictor.bundle, index, predictor.tables, candidates=50, load_seconds=0)
    assert p.candidates < p.num_entities
    qs = queries(p, 24, 5)
    hub = int(np.bincount(p.bundle.triples["train"][:, 0]).argmax())
    qs += [Query(hub, int(p.bundle.triples["train"][p.bundle.triples["train"][:, 0] == hub][0, 1]), "tail", k, f) for k in (1, 40) for f in (True, False)]
    qs = [Query(q.entity, q.relation, q.direction, k=[1, 5, 10, 37][i % 4] if q.k == 10 else q.k, filter_known=q.filter_known) for i, q in enumerate(qs)]
    together = p.predict_many(qs)
    for q, batch_answer in zip(qs, together):
        single = p.predict(q)
        assert [(r.entity, r.rank, r.known) for r in single] == [(r.entity, r.rank, r.known) for r in batch_answer], q
        assert [r.score for r in single] == pytest.approx([r.score for r in batch_answer], rel=1e-4)  # float32 matmuls of other shapes
    # and in another order and split, still the same
    again = p.predict_many(qs[::-1][:7])
    assert [[r.entity for r in a] for a in again] == [[r.entity for r in a] for a in together[::-1][:7]]


def test_cache_key_names_the_retrieval_settings(predictor: Predictor) -> None:
    q = queries(predictor, 1, 0)[0]
    exact = Predictor(predictor.bundle, None, predictor.tables, candidates=50, load_seconds=0)
    deeper = Predictor(predictor.bundle, predictor.index, predictor.tables, candidates=100, load_seconds=0)
    keys = {q.cache_key("f" * 64, p.retrieval) for p in (predictor, exact, deeper)}
    assert len(keys) == 3
    before = predictor.retrieval
    ivf = CandidateIndex.build([predictor.tables[b].numpy() for b in predictor.branches], "ivf", nprobe=4)
    p = Predictor(predictor.bundle, ivf, predictor.tables, candidates=50, load_seconds=0)
    r1 = p.retrieval
    ivf.nprobe = 8
    assert p.retrieval != r1 and before != r1


def test_exhaustive_scoring_in_chunks_equals_one_pass(predictor: Predictor, monkeypatch) -> None:
    import service.engine as engine

    exact = Predictor(predictor.bundle, None, predictor.tables, candidates=50, load_seconds=0)
    qs = queries(exact, 9, 4)
    whole = exact.predict_many(qs)
    monkeypatch.setattr(engine, "EXHAUSTIVE_CHUNK_BYTES", 1)  # one query per chunk
    chunked = exact.predict_many(qs)
    assert [[(r.entity, r.rank, r.known) for r in a] for a in whole] == [[(r.entity, r.rank, r.known) for r in a] for a in chunked]
    for q, got in zip(qs, whole):
        assert [r.entity for r in got] == [e for e, _, _ in exhaustive_reference(exact, q)]


def test_default_depth_recall_is_high_on_the_slice(predictor: Predictor) -> None:
    hits = total = 0
    for q in queries(predictor, 40, 9):
        exact = {r.entity for r in predictor.predict_exhaustive(q)}
        hits += len(exact & {r.entity for r in predictor.predict(q)})
        total += len(exact)
    assert hits / total >= 0.95


def test_explain_decomposes_the_score(predictor: Predictor) -> None:
    q = queries(predictor, 1, 3)[0]
    weights, explained = predictor.explain(q)
    assert set(weights) == set(predictor.branches)
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)
    predicted = predictor.predict(q)
    assert [e.entity for e in explained] == [r.entity for r in predicted]
    rel = q.relation if q.direction == "tail" else q.relation + predictor.num_relations
    with torch.no_grad():
        logits, _, _ = predictor.model.score_candidates(torch.tensor([q.entity]), torch.tensor([rel]), tables=predictor.tables)
    for e, r in zip(explained, predicted):
        assert sum(b["contribution"] for b in e.branches.values()) == pytest.approx(e.score, abs=1e-12)
        assert e.score == pytest.approx(r.score, rel=1e-4)
        for b, part in e.branches.items():
            assert part["contribution"] == pytest.approx(weights[b] * part["probability"], rel=1e-12)
            s = logits[b][0]
            assert part["rank"] == 1 + int((s > s[e.entity]).sum())
    # one given tail only: its real rank in the answer, not 1
    tail = predicted[3].entity
    _, only = predictor.explain(q, tail)
    assert [e.entity for e in only] == [tail]
    assert only[0].score == pytest.approx(predicted[3].score, rel=1e-4)
    assert only[0].rank == predicted[3].rank == 4
    deep = Query(q.entity, q.relation, q.direction, k=predictor.num_entities, filter_known=q.filter_known)
    full = predictor.predict_exhaustive(deep)
    for r in (full[0], full[57], full[-1]):
        _, got = predictor.explain(q, r.entity)
        assert got[0].rank == r.rank and got[0].known == r.known


def test_resolution_by_id_and_name_and_errors(predictor: Predictor) -> None:
    b = predictor.bundle
    e = 5
    q1 = predictor.names.resolve(b.vocab.entity_ids[e], b.vocab.relation_ids[0], direction="tail", k=3, filter_known=True)
    q2 = predictor.names.resolve(b.vocab.entity_names[e].upper(), b.vocab.relation_names[0], direction="tail", k=3, filter_known=True)
    assert q1 == q2 and q1.cache_key("f" * 64, predictor.retrieval) == q2.cache_key("f" * 64, predictor.retrieval)
    with pytest.raises(NotFound) as info:
        predictor.names.resolve(b.vocab.entity_names[e] + "x", b.vocab.relation_ids[0], direction="tail", k=3, filter_known=True)
    assert info.value.field == "head" and b.vocab.entity_names[e] in info.value.suggestions
    with pytest.raises(NotFound) as info:
        predictor.names.resolve(b.vocab.entity_ids[e], "/no/such/relation", direction="tail", k=3, filter_known=True)
    assert info.value.field == "relation"
    with pytest.raises(InvalidRequest):
        predictor.names.resolve(b.vocab.entity_ids[e], b.vocab.relation_ids[0], direction="tail", k=0, filter_known=True)
    with pytest.raises(InvalidRequest):
        predictor.names.resolve(b.vocab.entity_ids[e], b.vocab.relation_ids[0], direction="up", k=3, filter_known=True)


def test_index_is_saved_with_fingerprint_and_reused(slice_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(slice_bundle, copy)
    p1 = Predictor.load(copy, index_kind="flat")
    meta = json.loads((copy / INDEX_DIR / "flat.json").read_text())
    assert meta["model_fingerprint"] == p1.bundle.fingerprint and meta["ntotal"] == p1.num_entities
    mtime = (copy / INDEX_DIR / "flat.faiss").stat().st_mtime_ns
    Predictor.load(copy, index_kind="flat")
    assert (copy / INDEX_DIR / "flat.faiss").stat().st_mtime_ns == mtime  # reused, not rebuilt
    meta["model_fingerprint"] = "0" * 64
    (copy / INDEX_DIR / "flat.json").write_text(json.dumps(meta))
    assert CandidateIndex.load(copy / INDEX_DIR, "flat", p1.bundle.fingerprint, p1.index.dims, p1.num_entities) is None
    Predictor.load(copy, index_kind="flat")  # rebuilt for the right model
    assert json.loads((copy / INDEX_DIR / "flat.json").read_text())["model_fingerprint"] == p1.bundle.fingerprint


def test_unwritable_bundle_still_serves(slice_bundle: Path, tmp_path: Path, caplog) -> None:
    # Tests run as root, for whom chmod 0o555 stops nothing: make the index folder impossible
    # to create instead (a file stands where it would go), as a read-only mount would.
    copy = tmp_path / "ro"
    shutil.copytree(slice_bundle, copy)
    shutil.rmtree(copy / INDEX_DIR, ignore_errors=True)
    (copy / INDEX_DIR).write_text("not a folder")
    with caplog.at_level("INFO", logger="service.engine"):
        p = Predictor.load(copy, index_kind="flat")
    assert len(p.predict(queries(p, 1, 0)[0])) == 10
    assert "index not saved" in caplog.text and (copy / INDEX_DIR).read_text() == "not a folder"


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_index_is_refused_and_rebuilt(slice_bundle: Path, tmp_path: Path, caplog, damage: str) -> None:
    copy = tmp_path / "b"
    shutil.copytree(slice_bundle, copy)
    p1 = Predictor.load(copy, index_kind="flat")
    path = copy / INDEX_DIR / "flat.faiss"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 3]
    path.write_bytes(bytes(data))
    assert CandidateIndex.load(copy / INDEX_DIR, "flat", p1.bundle.fingerprint, p1.index.dims, p1.num_entities) is None
    assert "checksum mismatch" in caplog.text and str(path) in caplog.text
    p2 = Predictor.load(copy, index_kind="flat")  # rebuilt, saved again, and it verifies
    q = queries(p2, 1, 1)[0]
    assert [r.entity for r in p2.predict(q)] == [r.entity for r in p1.predict(q)]
    meta = json.loads((copy / INDEX_DIR / "flat.json").read_text())
    from model.bundle.format import sha256_file

    assert meta["sha256"] == sha256_file(path)
    assert CandidateIndex.load(copy / INDEX_DIR, "flat", p1.bundle.fingerprint, p1.index.dims, p1.num_entities) is not None


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_index_kinds_agree_with_exact_search(predictor: Predictor, kind: str) -> None:
    xb = torch.cat([predictor.tables[b] for b in predictor.branches], dim=1).numpy()
    exact = CandidateIndex.build(xb, "flat")
    approx = CandidateIndex.build(xb, kind, nprobe=10_000, refine_factor=8)
    xq = xb[:20] * 0.5 + 0.1
    _, i_exact = exact.search(xq, 10)
    _, i_approx = approx.search(xq, 10, xb)  # PQ codes: re-ranked exactly from xb
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_exact, i_approx)])
    assert overlap >= 0.9  # ties tolerated; HNSW and PQ are approximate by design


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_l2_reduced_index_returns_the_exact_inner_products(kind: str) -> None:
    """IVF and HNSW index the inner-product-to-L2 reduction; searched exhaustively they must
    return flat inner-product search's ids and scores, on vectors of very unequal norms."""
    rng = np.random.default_rng(0)
    xb = (rng.standard_normal((3000, 24)) * rng.uniform(0.1, 5.0, (3000, 1))).astype(np.float32)
    xq = rng.standard_normal((15, 24)).astype(np.float32)
    exact = CandidateIndex.build(xb, "flat")
    approx = CandidateIndex.build(xb, kind, nprobe=100_000)
    d_exact, i_exact = exact.search(xq, 10)
    d_approx, i_approx = approx.search(xq, 10)
    assert approx.index.d == 28 and approx.index.metric_type == faiss.METRIC_L2
    if kind == "ivf":  # every list probed: exact
        np.testing.assert_array_equal(i_approx, i_exact)
    else:
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_exact, i_approx)]) >= 0.95
    ref = np.take_along_axis(xq @ xb.T, i_approx, axis=1)  # the inner products of what came back
    np.testing.assert_allclose(d_approx, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
@pytest.mark.parametrize("nprobe", [1, 5, 100_000])
def test_ivf_search_reports_the_lists_a_plain_search_visits(kind: str, nprobe: int) -> None:
    """search_part hands FAISS its own coarse assignment (search_preassigned): the same ids and
    scores as a plain FAISS search with the same nprobe, and the lists are the coarse
    quantizer's nearest, as that search picks them."""
    rng = np.random.default_rng(1)
    xb = (rng.standard_normal((4000, 24)) * rng.uniform(0.1, 5.0, (4000, 1))).astype(np.float32)
    xq = rng.standard_normal((9, 24)).astype(np.float32)
    index = CandidateIndex.build(xb, kind, nprobe=nprobe)
    d, i, lists = index.search_part(0, xq, 50)
    reduced, scale, norm_sq = index._reduced_queries(0, xq)
    ivf = faiss.extract_index_ivf(index.index)
    probes = min(nprobe, ivf.nlist)
    d_ref, i_ref = index.index.search(reduced, 50, params=faiss.SearchParametersIVF(nprobe=probes))
    np.testing.assert_array_equal(i, i_ref)
    ip_ref = ((scale**2 * norm_sq)[:, None] + index.max_norm_sq - d_ref) / (2 * scale[:, None])
    np.testing.assert_allclose(d, np.where(i_ref >= 0, ip_ref, -np.inf), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(lists, ivf.quantizer.search(reduced, probes)[1])
    assert lists.shape == (9, probes)
    assert CandidateIndex.build(xb, "flat").search_part(0, xq, 5)[2] is None  # no lists to report


def test_saved_index_of_an_older_format_is_rebuilt(slice_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(slice_bundle, copy)
    p1 = Predictor.load(copy, index_kind="ivf")
    meta_path = copy / INDEX_DIR / "ivf.json"
    meta = json.loads(meta_path.read_text())
    dims = [t.shape[1] for t in p1.tables.values()]
    assert CandidateIndex.load(copy / INDEX_DIR, "ivf", p1.bundle.fingerprint, dims, p1.num_entities) is not None
    old = dict(meta, dim=sum(dims), factory=meta["factory"][0], max_norm_sq=meta["max_norm_sq"][0])  # one index over xb
    del old["dims"], old["part_bytes"]
    meta_path.write_text(json.dumps(old))
    assert CandidateIndex.load(copy / INDEX_DIR, "ivf", p1.bundle.fingerprint, dims, p1.num_entities) is None
    del meta["max_norm_sq"]  # an index saved before the L2 reduction
    meta_path.write_text(json.dumps(meta))
    assert CandidateIndex.load(copy / INDEX_DIR, "ivf", p1.bundle.fingerprint, dims, p1.num_entities) is None


def test_l2_reduced_index_copes_with_zero_vectors() -> None:
    """An all-zero table (M = 0) or a zero query must not divide by zero."""
    zeros = CandidateIndex.build(np.zeros((200, 8), dtype=np.float32), "ivf", nprobe=1000)
    d, i = zeros.search(np.ones((2, 8), dtype=np.float32), 5)
    assert np.isfinite(d).all() and (d == 0).all() and (i >= 0).all()
    rng = np.random.default_rng(1)
    index = CandidateIndex.build(rng.standard_normal((200, 8)).astype(np.float32), "ivf", nprobe=1000)
    d, i = index.search(np.zeros((1, 8), dtype=np.float32), 5)
    np.testing.assert_allclose(d, 0, atol=1e-4)
