"""Calibration maps (model.bundle.calibration) against slow, obviously correct references."""

from __future__ import annotations

import numpy as np

from model.bundle.calibration import Calibration, ECE_SLACK, _fit_isotonic, choose_method, _fit_platt, calibration_metrics, fit_calibration, fit_method, relation_families, Samples


def test_platt_recovers_known_parameters() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-12, 0, size=200_000)
    y = (rng.random(x.shape) < 1 / (1 + np.exp(-(0.8 * x + 2.0)))).astype(float)
    a, b = _fit_platt(x, y)
    assert abs(a - 0.8) < 0.03 and abs(b - 2.0) < 0.1


def _isotonic_reference(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit by brute force over block merges (tiny inputs only)."""
    blocks = [[v] for v in y]
    changed = True
    while changed:
        changed = False
        for i in range(len(blocks) - 1):
            if np.mean(blocks[i]) >= np.mean(blocks[i + 1]):
                blocks[i:i + 2] = [blocks[i] + blocks[i + 1]]
                changed = True
                break
    return np.concatenate([[np.mean(b)] * len(b) for b in blocks])


def test_isotonic_matches_reference_and_is_monotone() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = np.sort(rng.normal(size=30))
        y = (rng.random(30) < 0.5).astype(float)
        tops, means = _fit_isotonic(x, y)
        assert all(m1 < m2 for m1, m2 in zip(means, means[1:]))
        cal = Calibration("isotonic-family", [0], steps=[{"x": tops, "y": means}])
        fitted = cal._apply(x, np.zeros(30, dtype=int))
        np.testing.assert_allclose(fitted, _isotonic_reference(y), atol=1e-12)


def test_ece_zero_when_calibrated_and_large_when_not() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, size=100_000)
    y = (rng.random(p.shape) < p).astype(float)
    assert calibration_metrics(p, y)["ece"] < 0.01
    assert calibration_metrics(p ** 3, y)["ece"] > 0.1


def test_fit_calibration_improves_a_miscalibrated_score_and_round_trips() -> None:
    rng = np.random.default_rng(3)
    n = 60_000
    fam = rng.integers(0, 4, size=n)
    lp = rng.uniform(-10, 0, size=n)
    truth = 1 / (1 + np.exp(-(0.5 * lp + 1.0 + fam)))  # a different map per family
    y = (rng.random(n) < truth).astype(float)
    s = Samples(lp, y, fam, np.arange(n) // 10)
    families = np.array([0, 1, 2, 3])
    cal = fit_calibration(s, families)
    assert cal.method in ("platt-family", "isotonic-family")
    raw = calibration_metrics(np.exp(lp), y)
    fitted = calibration_metrics(cal._apply(lp, fam), y)
    assert fitted["log_loss"] < raw["log_loss"] and fitted["ece"] < 0.02 < raw["ece"]
    again = Calibration.from_json(cal.to_json())
    rel = rng.integers(0, 4, size=50)
    p = rng.uniform(0, 1, size=50)
    np.testing.assert_allclose(again.probability(p, rel), cal.probability(p, rel))
    assert np.all((0 <= cal.probability(p, rel)) & (cal.probability(p, rel) <= 1))
    assert fit_method("identity", s, families).probability(0.3, 0) == 0.3


def test_relation_families_count_answers_per_query() -> None:
    # relation 0: each head has one tail (1-1); relation 1: one head with 20 tails (1-N)
    train = np.array([[i, 0, 100 + i] for i in range(5)] + [[50, 1, 200 + j] for j in range(20)])
    fam = relation_families(train, 2)
    assert fam[0] == 0 and fam[2] == 0  # 1-1 both ways (reciprocal of 0 is 2)
    assert fam[1] == 3  # 20 tails per query
    assert fam[3] == 0  # reciprocal: each tail has one head


def test_extras_fit_on_a_graph_smaller_than_the_cut_off(tiny_dataset) -> None:
    """6 entities, fewer than CANDIDATES: the samples are every entity, nothing fails."""
    from model.bundle.format import load_bundle, save_bundle
    from model.kg.dataset import load_dataset
    from model.pipeline import fit_extras
    from model.network.imf import IMFConfig
    from model.training.config import TrainConfig
    from model.training.loop import train

    ds = load_dataset(tiny_dataset)
    result = train(TrainConfig(dataset=str(tiny_dataset), epochs=2, seed=0, patience=100), ds, progress=False, model_config=IMFConfig(dim=8, relation_dim=8))
    out = save_bundle(tiny_dataset.parent / "bundle", result.model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={}, metrics={})
    fit_extras(out, dataset=tiny_dataset)
    b = load_bundle(out)
    assert b.calibration is not None and b.feature_map is not None


def test_choice_weighs_log_loss_and_ece() -> None:
    report = {
        "a": {"log_loss": 0.140, "ece": 0.0200},  # best log-loss, but reads off badly
        "b": {"log_loss": 0.142, "ece": 0.0010},
        "c": {"log_loss": 0.141, "ece": 0.0004 + ECE_SLACK},  # within the slack of d's ECE: eligible, better log-loss than b
        "d": {"log_loss": 0.150, "ece": 0.0005},  # best ECE
    }
    assert choose_method(report) == "c"
    report["c"]["ece"] += 2e-4  # now outside the slack
    assert choose_method(report) == "b"
    assert choose_method({"x": {"log_loss": 1.0, "ece": 0.3}}) == "x"
