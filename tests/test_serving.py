"""What serving precomputes (model.network.serving.FrozenIMF, column tables) against the model's
own eval-mode scoring and the per-query loop reference; and the engine's fast paths against
its slow reference (Predictor.predict_reference) on the shipped model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.network.serving import FrozenIMF, column_tables
from service.engine import Predictor
from service.query import Query
from tests.test_imf import SEEDS, make_model, slow_query

REPO = Path(__file__).resolve().parent.parent


def batch(seed: int, size: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 40, (size,), generator=g), torch.randint(0, 10, (size,), generator=g)  # reciprocals included


@pytest.mark.parametrize("matrices", [True, False], ids=["relation-matrices", "re-laid-core"])
@pytest.mark.parametrize("seed", SEEDS)
def test_frozen_query_vectors_equal_the_models(seed: int, matrices: bool) -> None:
    model = make_model(seed)
    frozen = FrozenIMF(model, max_relation_bytes=2**40 if matrices else 0)
    assert frozen.uses_matrices is matrices
    heads, rels = batch(seed)
    with torch.no_grad():
        tables = model.entity_tables()
        got = frozen.query_vectors(heads, rels, tables)
        want = model.query_vectors(heads, rels, tables)
        for b in model.branches:
            torch.testing.assert_close(got[b], want[b], rtol=1e-5, atol=1e-5)
            ref = torch.stack([slow_query(model, b, int(h), int(r)) for h, r in zip(heads, rels)])
            torch.testing.assert_close(got[b], ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(frozen.decision_weights(rels), model.decision_weights(rels))


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
@pytest.mark.parametrize("seed", SEEDS)
def test_score_all_on_column_tables_equals_rescore(seed: int, output: str) -> None:
    model = make_model(seed, output=output)
    frozen = FrozenIMF(model)
    heads, rels = batch(seed, 9)
    with torch.no_grad():
        tables = model.entity_tables()
        q = frozen.query_vectors(heads, rels, tables)
        w = frozen.decision_weights(rels)
        got = frozen.score_all(q, w, column_tables(tables))
        _, want = model.rescore(q, w, tables, None)
    assert got.dtype == torch.float64 and got.shape == (9, 40)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-12)
    if output == "softmax":  # a mixture of softmaxes: every row sums to 1
        torch.testing.assert_close(got.sum(dim=1), torch.ones(9, dtype=torch.float64))


@pytest.mark.parametrize("seed", SEEDS)
def test_log_normalizers_on_column_tables(seed: int) -> None:
    model = make_model(seed)
    frozen = FrozenIMF(model)
    heads, rels = batch(seed, 7)
    with torch.no_grad():
        tables = model.entity_tables()
        q = frozen.query_vectors(heads, rels, tables)
        got = frozen.log_normalizers(q, column_tables(tables))
        want = model.log_normalizers(q, tables, chunk=11)
    for b in model.branches:
        torch.testing.assert_close(got[b], want[b], rtol=1e-6, atol=1e-6)


def test_frozen_model_follows_nothing_but_its_own_weights() -> None:
    """Precomputed at construction: a later change of the weights needs a new FrozenIMF (the
    engine builds one per loaded model and never trains it)."""
    model = make_model(0)
    frozen = FrozenIMF(model)
    heads, rels = batch(0, 5)
    with torch.no_grad():
        before = frozen.query_vectors(heads, rels, model.entity_tables())
        model.decoders["structure"].core.mul_(2.0)
        again = FrozenIMF(model).query_vectors(heads, rels, model.entity_tables())
    assert torch.equal(frozen.query_vectors(heads, rels, model.entity_tables())["structure"], before["structure"])
    assert not torch.allclose(again["structure"], before["structure"])


@pytest.fixture(scope="module")
def shipped() -> Predictor:
    return Predictor.load(REPO / "artifacts" / "default", save_index=False)


def test_shipped_model_fast_paths_equal_the_reference(shipped: Predictor) -> None:
    """Every fast path (precomputed relation matrices, column tables, one exp pass, batches)
    gives the reference's answers on test queries: the same entities in the same order, scores
    equal to float32 rounding."""
    p = shipped
    rng = np.random.default_rng(0)
    test = p.bundle.triples["test"]
    rows = test[rng.choice(len(test), 60, replace=False)].tolist()
    qs = [
        Query(entity=h if i % 2 == 0 else t, relation=r, direction="tail" if i % 2 == 0 else "head", k=10, filter_known=bool(i % 3))
        for i, (h, r, t) in enumerate(rows)
    ]
    together = p.predict_many(qs)
    for q, batched in zip(qs, together):
        ref = p.predict_reference(q)
        for got in (p.predict(q), batched):
            assert [(r.entity, r.rank, r.known) for r in got] == [(r.entity, r.rank, r.known) for r in ref], q
            assert [r.score for r in got] == pytest.approx([r.score for r in ref], rel=1e-4)
