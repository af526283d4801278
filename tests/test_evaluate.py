"""Filtered, tie-aware ranking against hand-made cases and a loop reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.evaluation.ranking import filtered_ranks, metrics_from_ranks, rank_triples, summarize
from model.network.imf import FUSED, IMF, IMFConfig
from model.kg.triples import AnswerIndex


def test_hand_made_ranks_with_ties_and_filtering() -> None:
    scores = torch.tensor([
        [0.9, 0.5, 0.5, 0.1],  # target 1 ties with 2: rank 1 + 1 (0.9 above) + 1/2 = 2.5
        [0.9, 0.5, 0.5, 0.1],  # target 1, entity 0 filtered (known): 1 + 0 + 1/2 = 1.5
        [0.9, 0.5, 0.5, 0.1],  # target 1, both 0 and 2 filtered: rank 1
        [0.3, 0.3, 0.3, 0.3],  # all tied, target 3: 1 + 3/2 = 2.5 (the middle, not 1)
        [0.1, 0.2, 0.3, 0.4],  # target 3 is best; filtering the target itself never hides it
    ])
    targets = torch.tensor([1, 1, 1, 3, 3])
    known = torch.zeros(5, 4, dtype=torch.bool)
    known[1, 0] = True
    known[2, [0, 2]] = True
    known[4, 3] = True
    assert filtered_ranks(scores, targets, known).tolist() == [2.5, 1.5, 1.0, 2.5, 1.0]


def test_summarize_hand_made() -> None:
    m = summarize(np.array([1.0, 2.0, 4.0, 10.0, 10.5]))
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.25 + 0.1 + 1 / 10.5) / 5)
    assert m["mr"] == pytest.approx(27.5 / 5)
    assert (m["hits@1"], m["hits@3"], m["hits@10"]) == (0.2, 0.4, 0.8)  # 10.5 is not a hit@10


def loop_rank(scores: list[float], target: int, known: set[int]) -> float:
    s_t = scores[target]
    greater = sum(1 for e, s in enumerate(scores) if e != target and e not in known and s > s_t)
    equal = sum(1 for e, s in enumerate(scores) if e != target and e not in known and s == s_t)
    return 1 + greater + equal / 2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_filtered_ranks_match_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=(20, 15)).astype(np.float32)  # many ties
    targets = rng.integers(0, 15, 20)
    known = rng.random((20, 15)) < 0.3
    got = filtered_ranks(torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(known)).numpy()
    ref = [loop_rank(scores[i].tolist(), int(targets[i]), set(np.flatnonzero(known[i]).tolist()) - {int(targets[i])}) for i in range(20)]
    assert got.tolist() == ref


@pytest.mark.parametrize("seed", [0, 1])
def test_rank_triples_matches_per_triple_reference(seed: int) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, nrel = 25, 3
    model = IMF(IMFConfig(num_entities=n, num_relations=nrel, modalities={"text": 4}, dim=8, relation_dim=4),
                {"text": torch.randn(n, 4)}, {"text": torch.ones(n, dtype=torch.bool)}).eval()
    triples = np.unique(np.stack([rng.integers(0, n, 60), rng.integers(0, nrel, 60), rng.integers(0, n, 60)], 1), axis=0)
    test = triples[:12]
    index = AnswerIndex(triples, n, nrel)
    ranks = rank_triples(model, test, index, batch_size=5)
    for direction in ("tail", "head"):
        for i, (h, r, t) in enumerate(test.tolist()):
            e, rel, target = (h, r, t) if direction == "tail" else (t, r + nrel, h)
            with torch.no_grad():
                logits, _, p = model.score_candidates(torch.tensor([e]), torch.tensor([rel]))
            known = set(index.answers_of(e, rel).tolist()) - {target}
            assert ranks[direction][FUSED][i] == loop_rank(p[0].tolist(), target, known)
            for b in model.branches:
                assert ranks[direction][b][i] == loop_rank(logits[b][0].tolist(), target, known)
    report = metrics_from_ranks(ranks, "test")
    assert set(report) >= {"split", "mrr", "mr", "hits@1", "hits@3", "hits@10", "per_direction", "per_branch"}
    assert set(report["per_branch"]) == set(model.branches)
    assert set(report["per_direction"]) == {"head", "tail"}
    both = np.concatenate([ranks["tail"][FUSED], ranks["head"][FUSED]])
    assert report["mrr"] == pytest.approx(float(np.mean(1 / both)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_with_filter_matches_a_full_sort(seed: int) -> None:
    from model.evaluation.predict import top_k_with_filter

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 50, 2000).astype(np.float64)  # many ties, also at the cut
    known = rng.random(2000) < 0.1
    ids = rng.permutation(2000) + 10
    for k in (1, 7, 40, 600):
        for filt in (True, False):
            got = [(p.entity, p.score, p.rank, p.known) for p in top_k_with_filter(scores, known, k, filter_known=filt, ids=ids)]
            full = sorted(range(2000), key=lambda i: (-scores[i], ids[i]))
            if filt:
                full = [i for i in full if not known[i]]
            ref = [(i, float(scores[i]), r + 1, bool(known[i])) for r, i in enumerate(full[:k])]
            assert got == ref


def test_nan_scores_rank_last() -> None:
    """A diverged model's NaN scores must not look perfect (NaN compares false with everything,
    so a naive count of 'greater' scores gives rank 1)."""
    nan = float("nan")
    scores = torch.tensor([[nan, nan, nan, nan], [0.1, nan, 0.3, 0.2], [nan, 0.5, 0.1, 0.9]])
    known = torch.tensor([[False, False, False, False], [False, False, False, False], [False, False, False, True]])
    ranks = filtered_ranks(scores, torch.tensor([0, 1, 0]), known)
    # row 0: all NaN -> the last of 4; row 1: NaN target -> last of 4;
    # row 2: NaN target, entity 3 filtered -> last of the 3 unfiltered
    assert ranks.tolist() == [4.0, 4.0, 3.0]
    # a NaN among the others ranks below a finite target
    assert filtered_ranks(torch.tensor([[0.2, nan, 0.1]]), torch.tensor([2]), torch.zeros(1, 3, dtype=torch.bool)).tolist() == [2.0]
