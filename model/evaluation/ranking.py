"""Filtered link-prediction ranking: MRR, MR, Hits@1/3/10, per direction and per branch.

For a test triple (h, r, t) the tail query (h, r, ?) ranks t among all entities after removing
every *other* known true tail of (h, r) (from train + valid + test: the "filtered" setting); the
head query (?, r, t) is asked as (t, r^-1, ?) and ranks h likewise. Ties count as the mean of the
optimistic and the pessimistic rank:

    rank = 1 + #{score > s_target} + #{score == s_target, other than the target} / 2

so a model that gives every entity the same score gets the middle rank, not rank 1. The fused
model (decision-fusion probability p) and every branch (its own logit) are ranked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from model.network.imf import FUSED, IMF
from model.kg.triples import DIRECTIONS, AnswerIndex, query_relation

log = logging.getLogger(__name__)

HITS_AT = (1, 3, 10)


def filtered_ranks(scores: Tensor, targets: Tensor, known: Tensor) -> Tensor:
    """Tie-aware filtered rank of each target.

    scores: (B, N) float; targets: (B,) entity ids; known: (B, N) bool, True for true answers of
    the query (the target may or may not be marked). Returns ranks (B,) float64, >= 1.

    A NaN score ranks below every number: a NaN target gets the last rank among the unfiltered
    candidates, so a diverged model scores near MRR 0 instead of looking perfect.
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows, targets].unsqueeze(1)  # (B, 1)
    others = known.clone()
    others[rows, targets] = False  # the target itself is never filtered
    nan = torch.isnan(scores)
    masked = scores.masked_fill(others | nan, float("-inf"))
    greater = (masked > target_scores).sum(dim=1)
    equal = (masked == target_scores).sum(dim=1) - 1  # minus the target itself
    ranks = 1.0 + greater.double() + equal.double() / 2.0
    last = (~others).sum(dim=1).double()  # the unfiltered candidates, the target included
    return torch.where(nan[rows, targets], last, ranks)


def summarize(ranks: np.ndarray) -> dict[str, float]:
    """MRR, MR and Hits@k of a vector of ranks."""
    if len(ranks) == 0:
        return {"mrr": float("nan"), "mr": float("nan"), **{f"hits@{k}": float("nan") for k in HITS_AT}, "count": 0}
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {"mrr": float(np.mean(1.0 / ranks)), "mr": float(np.mean(ranks))}
    for k in HITS_AT:
        out[f"hits@{k}"] = float(np.mean(ranks <= k))
    out["count"] = int(len(ranks))
    return out


@torch.no_grad()
def rank_triples(
    model: IMF,
    triples: np.ndarray,
    known: AnswerIndex,
    *,
    batch_size: int = 256,
    directions: Iterable[str] = DIRECTIONS,
    device: torch.device | str = "cpu",
    progress: bool = False,
    tables: dict[str, Tensor] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Filtered ranks of `triples` (n, 3) for the fused model and every branch.

    tables: the entity tables to score with (default `model.entity_tables()`), e.g. with some
    rows replaced (model.bundle.feature_map's check). Returns ranks[direction][output] -> (n,) where
    output is "fused" or a branch name.
    """
    model.eval()
    num_rel = model.cfg.num_relations
    if tables is None:
        tables = model.entity_tables()
    outputs = [FUSED, *model.branches]
    ranks: dict[str, dict[str, list[np.ndarray]]] = {d: {o: [] for o in outputs} for d in directions}
    steps = [(d, s) for d in directions for s in range(0, len(triples), batch_size)]
    for direction, start in tqdm(steps, desc="ranking", unit="batch", disable=not progress, leave=False):
        batch = triples[start:start + batch_size]
        ents, targets = (batch[:, 0], batch[:, 2]) if direction == "tail" else (batch[:, 2], batch[:, 0])
        rels = query_relation(batch[:, 1], direction, num_rel)
        e = torch.from_numpy(ents).to(device)
        r = torch.from_numpy(rels).to(device)
        tgt = torch.from_numpy(targets).to(device)
        logits, _, p = model.score_candidates(e, r, tables=tables)
        mask = known.dense(ents, rels, device=device)
        ranks[direction][FUSED].append(filtered_ranks(p, tgt, mask).cpu().numpy())
        for b in model.branches:
            ranks[direction][b].append(filtered_ranks(logits[b], tgt, mask).cpu().numpy())
    return {d: {o: np.concatenate(v) if v else np.empty(0) for o, v in outs.items()} for d, outs in ranks.items()}


def metrics_from_ranks(ranks: dict[str, dict[str, np.ndarray]], split: str) -> dict:
    """The report of `imf evaluate --json`: fused metrics overall, per direction, per branch."""
    directions = list(ranks)
    outputs = list(next(iter(ranks.values())))

    def block(output: str) -> dict:
        both = np.concatenate([ranks[d][output] for d in directions])
        res = summarize(both)
        res["per_direction"] = {d: summarize(ranks[d][output]) for d in directions}
        return res

    report = {"split": split, **block(FUSED)}
    report["per_branch"] = {o: block(o) for o in outputs if o != FUSED}
    return report


def evaluate(
    model: IMF,
    triples: np.ndarray,
    known: AnswerIndex,
    *,
    split: str,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict:
    """Filtered metrics of `triples` (n, 3), as `metrics_from_ranks` reports them."""
    ranks = rank_triples(model, triples, known, batch_size=batch_size, device=device, progress=progress)
    return metrics_from_ranks(ranks, split)


def format_report(report: dict) -> str:
    """A human-readable table of an evaluation report."""
    keys = ["mrr", "mr", "hits@1", "hits@3", "hits@10"]
    lines = [f"split: {report['split']}  ({report['count']} ranked queries)", f"{'':22s}" + "".join(f"{k:>10s}" for k in keys)]

    def row(label: str, m: dict) -> str:
        return f"{label:22s}" + "".join(f"{m[k]:10.1f}" if k == "mr" else f"{m[k]:10.4f}" for k in keys)

    lines.append(row("fused (IMF)", report))
    for d, m in report["per_direction"].items():
        lines.append(row(f"  {d} prediction", m))
    for b, m in report["per_branch"].items():
        lines.append(row(f"branch {b}", m))
    return "\n".join(lines)
