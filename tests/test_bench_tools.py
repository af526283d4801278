"""The large bundles the serving benchmark runs on (bench/synthetic.py) are what they claim."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.synthetic import make_scaled, make_synthetic
from model.bundle.format import load_bundle


def test_scaled_bundle_keeps_the_trained_model_on_its_original_entities(slice_bundle: Path, tmp_path: Path) -> None:
    src = load_bundle(slice_bundle)
    n = len(src.vocab.entity_ids)
    out = make_scaled(slice_bundle, tmp_path / "scaled", 3 * n + 7, jitter=0.5, seed=1)
    big = load_bundle(out)  # verifies fingerprints and shapes
    assert len(big.vocab.entity_ids) == 3 * n + 7 and len(set(big.vocab.entity_ids)) == 3 * n + 7
    assert big.vocab.entity_ids[:n] == src.vocab.entity_ids and big.vocab.relation_ids == src.vocab.relation_ids
    for split in ("train", "valid", "test"):
        assert (big.triples[split] == src.triples[split]).all()
    a, b = src.model.eval(), big.model.eval()
    heads = torch.arange(0, n, max(1, n // 20))
    rels = torch.arange(len(heads)) % (2 * src.num_relations)
    with torch.no_grad():
        ta, tb = a.entity_tables(), b.entity_tables()
        for name in ta:
            # the projection is folded into float16 features: equal up to that rounding
            torch.testing.assert_close(tb[name][:n], ta[name], atol=5e-3, rtol=5e-3)
            copies = tb[name][n: 2 * n]
            # jitter 0.5 std per column: mean |noise| = 0.5 * sqrt(2/pi) ~ 0.4 std (multimodal: through the fusion)
            # the fused table sees the jitter only through the (saturating) fusion: a weaker bound
            floor = 0.05 if name == "multimodal" else 0.2
            assert (copies - ta[name]).abs().mean() > floor * ta[name].std(0).mean(), f"{name}: copies are not jittered"
        qa, qb = a.query_vectors(heads, rels, ta), b.query_vectors(heads, rels, tb)
        for name in qa:
            torch.testing.assert_close(qb[name], qa[name], atol=5e-3, rtol=5e-3)


def test_random_synthetic_bundle_loads(tmp_path: Path) -> None:
    out = make_synthetic(tmp_path / "syn", 500, relations=5, dim=8)
    b = load_bundle(out)
    assert len(b.vocab.entity_ids) == 500 and b.num_relations == 5
    assert set(b.model.cfg.modalities) == {"text", "numeric"}


def test_retrieval_profile_times_the_steps_of_an_indexed_engine(slice_bundle: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "bundle"
    shutil.copytree(slice_bundle, copy)  # the profile's engine saves its index beside the bundle
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(repo / "bench" / "retrieval_profile.py"), str(copy), "--index", "ivf", "--queries", "6"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "6 queries" in out and "per query: p50" in out
    for step in ("_queries", "_retrieve", "search_part"):
        assert f"  {step}: " in out, out
