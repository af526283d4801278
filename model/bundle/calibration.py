"""Calibrated probabilities: "how likely is this triple to hold", fitted on the validation split.

The fused score p(t | h, r) of a cross-entropy model is a share of one distribution over all
entities: a query with 30 true answers spreads its mass over them, so a true answer may score
0.04. A calibration maps p to the probability that the triple holds:

    probability = sigmoid(a_f * log p + b_f)        f = family of the query relation

Families group the (2R, reciprocals included) query relations by how many answers a query has
in train on average (1, up to 4, up to 16, more): the map from a share to a truth probability
depends mostly on that. The event calibrated is the filtered one, as ranking is: a candidate
(h, r, t) not already in the graph, labelled true when it is a held-out fact. Fitting samples
are the top CANDIDATES non-train answers of each validation query (both directions), labelled
by the validation triples; evaluation does the same on the test split with train + valid
filtered. So the probability is calibrated where a person looks (the top answers); below the
cut-off the monotone maps extrapolate. Held-out facts are an incomplete truth (the graph is open-world), so the probability
is a lower bound on "true", and exactly "would be confirmed by held-out data".

Methods compared (`fit_calibration` picks by 2-fold cross-fitted validation log-loss, queries
split in halves, then refits the winner on all of valid):
  identity        probability = p (the raw score)
  platt           one (a, b) for all relations
  platt-family    one (a, b) per family
  isotonic-family monotone step function of log p per family (pool-adjacent-violators)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from model.network.imf import IMF
from model.kg.triples import DIRECTIONS, AnswerIndex, query_relation

log = logging.getLogger(__name__)

CANDIDATES = 20  # top non-train answers per validation query used as fitting samples
FAMILY_EDGES = (1.5, 4.0, 16.0)  # mean answers per query: [1, 1.5) [1.5, 4) [4, 16) [16, inf)
ECE_BINS = 15
LOG_EPS = 1e-12
METHODS = ("identity", "platt", "platt-family", "isotonic-family")


def relation_families(train: np.ndarray, num_relations: int) -> np.ndarray:
    """(2R,) int family of every query relation (reciprocals included) from train statistics."""
    fam = np.zeros(2 * num_relations, dtype=np.int64)
    for direction in DIRECTIONS:
        ents = train[:, 0] if direction == "tail" else train[:, 2]
        rels = query_relation(train[:, 1], direction, num_relations)
        pairs = np.unique(np.stack([ents, rels], axis=1), axis=0)
        queries = np.bincount(pairs[:, 1], minlength=2 * num_relations)
        facts = np.bincount(rels, minlength=2 * num_relations)
        mean = facts / np.maximum(queries, 1)
        sel = np.unique(rels)
        fam[sel] = np.searchsorted(FAMILY_EDGES, mean[sel], side="right")
    return fam


@dataclass
class Samples:
    """Calibration samples: log p, label (1 = held-out fact), family, query id."""

    log_p: np.ndarray
    label: np.ndarray
    family: np.ndarray
    query: np.ndarray

    def subset(self, mask: np.ndarray) -> Samples:
        return Samples(self.log_p[mask], self.label[mask], self.family[mask], self.query[mask])


@torch.no_grad()
def collect_samples(
    model: IMF,
    split: np.ndarray,
    filtered: AnswerIndex,
    families: np.ndarray,
    *,
    candidates: int = CANDIDATES,
    batch_size: int = 256,
) -> Samples:
    """Top `candidates` answers of every query of `split` (n, 3), both directions, that are
    not in `filtered` (the graph known before the split); label 1 when the triple is in split.
    Only the top candidates, true or not: adding the true answers ranked below the cut-off
    without the false ones there would teach the map that a low score means "true"."""
    model.eval()
    num_rel = model.cfg.num_relations
    n = model.cfg.num_entities
    tables = model.entity_tables()
    truth = AnswerIndex(split, n, num_rel)
    ents_all, rels_all = truth.query_entities(), truth.query_relations()
    out_lp, out_y, out_f, out_q = [], [], [], []
    for start in range(0, len(ents_all), batch_size):
        ents = ents_all[start:start + batch_size]
        rels = rels_all[start:start + batch_size]
        _, _, p = model.score_candidates(torch.from_numpy(ents), torch.from_numpy(rels), tables=tables)
        p = p.numpy()
        known = filtered.dense(ents, rels).numpy()
        pos = truth.dense(ents, rels).numpy()
        known &= ~pos
        p_masked = np.where(known, -1.0, p)
        k = min(candidates, n)  # a graph smaller than the cut-off: every entity
        top = np.argpartition(-p_masked, k - 1, axis=1)[:, :k]
        for i in range(len(ents)):
            cand = top[i][~known[i, top[i]]]
            out_lp.append(np.log(np.maximum(p[i, cand], LOG_EPS)))
            out_y.append(pos[i, cand].astype(np.float64))
            out_f.append(np.full(len(cand), families[rels[i]]))
            out_q.append(np.full(len(cand), start + i))
    return Samples(np.concatenate(out_lp), np.concatenate(out_y), np.concatenate(out_f), np.concatenate(out_q))


# ------------------------------------------------------------------------------ the maps


def _fit_platt(x: np.ndarray, y: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """Logistic regression of y on x: Newton's method with backtracking (the loss is convex;
    full steps overshoot when x spans tens of nats) and a tiny ridge for separable data."""

    def loss(a: float, b: float) -> float:
        z = a * x + b
        return float(np.sum(np.logaddexp(0.0, z) - y * z)) + 5e-5 * a * a

    a, b = 1.0, 0.0
    cur = loss(a, b)
    for _ in range(iters):
        s = 1.0 / (1.0 + np.exp(-np.clip(a * x + b, -35, 35)))
        g = np.array([np.sum((s - y) * x) + 1e-4 * a, np.sum(s - y)])
        w = s * (1 - s)
        h = np.array([[np.sum(w * x * x) + 1e-4, np.sum(w * x)], [np.sum(w * x), np.sum(w) + 1e-9]])
        step = np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-6:
            na, nb = a - t * step[0], b - t * step[1]
            new = loss(na, nb)
            if new <= cur:
                break
            t /= 2
        else:
            break
        converged = cur - new < 1e-10 * max(1.0, abs(cur))
        a, b, cur = na, nb, new
        if converged:
            break
    return float(a), float(b)


def _fit_isotonic(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators: (upper x of each block, block mean), non-decreasing."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    means: list[float] = []
    weights: list[float] = []
    tops: list[float] = []
    for xv, yv in zip(xs, ys):
        means.append(float(yv))
        weights.append(1.0)
        tops.append(float(xv))
        while len(means) > 1 and means[-2] >= means[-1]:
            w = weights[-2] + weights[-1]
            m = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w
            means[-2:] = [m]
            weights[-2:] = [w]
            tops[-2:] = [tops[-1]]
    return tops, means


@dataclass
class Calibration:
    """A fitted map from (log p, query relation) to a probability; JSON-serialisable."""

    method: str
    families: list[int]  # (2R,) family of each query relation
    params: list[list[float]] = field(default_factory=list)  # platt: [[a, b]] per family (one for "platt")
    steps: list[dict] = field(default_factory=list)  # isotonic: per family {"x": [...], "y": [...]}
    report: dict = field(default_factory=dict)  # validation figures of every method

    def probability(self, p: np.ndarray | float, query_relations: np.ndarray | int) -> np.ndarray:
        """Calibrated probabilities of fused scores `p` (any shape) for query relations of the
        same shape (or one relation), each in [0, 1]."""
        p = np.asarray(p, dtype=np.float64)
        if self.method == "identity":
            return np.clip(p, 0.0, 1.0)
        lp = np.log(np.maximum(p, LOG_EPS))
        fam = np.asarray(self.families, dtype=np.int64)[np.asarray(query_relations)]
        fam = np.broadcast_to(fam, lp.shape)
        return self._apply(lp, fam)

    def _apply(self, lp: np.ndarray, fam: np.ndarray) -> np.ndarray:
        if self.method == "identity":
            return np.clip(np.exp(lp), 0.0, 1.0)
        out = np.empty(lp.shape, dtype=np.float64)
        for f in np.unique(fam):
            sel = fam == f
            if self.method == "platt":
                a, b = self.params[0]
            elif self.method == "platt-family":
                a, b = self.params[int(f)] if int(f) < len(self.params) else self.params[-1]
            else:  # isotonic-family
                st = self.steps[int(f)]
                xs, ys = np.asarray(st["x"]), np.asarray(st["y"])
                idx = np.minimum(np.searchsorted(xs, lp[sel], side="left"), len(ys) - 1)
                out[sel] = ys[idx]
                continue
            out[sel] = 1.0 / (1.0 + np.exp(-np.clip(a * lp[sel] + b, -35, 35)))
        return out

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "families": self.families, "params": self.params, "steps": self.steps, "report": self.report})

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        d = json.loads(text)
        if d.get("method") not in METHODS or not isinstance(d.get("families"), list):
            raise ValueError("not a calibration: 'method' or 'families' missing or invalid")
        return cls(method=d["method"], families=[int(f) for f in d["families"]], params=d.get("params", []), steps=d.get("steps", []), report=d.get("report", {}))


def fit_method(method: str, s: Samples, families: np.ndarray) -> Calibration:
    nfam = len(FAMILY_EDGES) + 1
    cal = Calibration(method=method, families=[int(f) for f in families])
    if method == "platt":
        cal.params = [list(_fit_platt(s.log_p, s.label))]
    elif method == "platt-family":
        glob = _fit_platt(s.log_p, s.label)
        cal.params = [list(_fit_platt(s.log_p[s.family == f], s.label[s.family == f])) if (s.label[s.family == f].sum() >= 10) else list(glob) for f in range(nfam)]
    elif method == "isotonic-family":
        for f in range(nfam):
            sel = s.family == f
            if s.label[sel].sum() < 10:
                sel = np.ones_like(sel)
            x, y = _fit_isotonic(s.log_p[sel], s.label[sel])
            cal.steps.append({"x": x, "y": y})
    return cal


# ------------------------------------------------------------------------------ metrics


def calibration_metrics(prob: np.ndarray, label: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Log-loss, Brier score and expected calibration error (equal-width bins), plus the
    reliability curve (mean predicted vs observed frequency per non-empty bin)."""
    prob = np.clip(np.asarray(prob, dtype=np.float64), LOG_EPS, 1 - LOG_EPS)
    label = np.asarray(label, dtype=np.float64)
    logloss = float(-np.mean(label * np.log(prob) + (1 - label) * np.log(1 - prob)))
    brier = float(np.mean((prob - label) ** 2))
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    curve = []
    for k in range(bins):
        sel = which == k
        if sel.any():
            conf, acc = float(prob[sel].mean()), float(label[sel].mean())
            ece += sel.mean() * abs(conf - acc)
            curve.append({"bin": k, "count": int(sel.sum()), "predicted": conf, "observed": acc})
    return {"log_loss": logloss, "brier": brier, "ece": float(ece), "samples": int(len(prob)), "positives": int(label.sum()), "curve": curve}


ECE_SLACK = 0.005  # a map may trail the best cross-fitted ECE by this much and still be chosen


def choose_method(report: dict[str, dict]) -> str:
    """The calibration map to use, by both validation criteria: among the methods whose
    cross-fitted ECE is within ECE_SLACK of the lowest, the one with the lowest log-loss (so a
    map that wins log-loss while reading off probabilities worse than another is passed over)."""
    best_ece = min(m["ece"] for m in report.values())
    eligible = [k for k in report if report[k]["ece"] <= best_ece + ECE_SLACK]
    return min(eligible, key=lambda k: report[k]["log_loss"])


def fit_calibration(samples: Samples, families: np.ndarray, seed: int = 0) -> Calibration:
    """Pick a method by its 2-fold cross-fitted log-loss and ECE on the samples (folds split by
    query; `choose_method`), refit it on all of them; the report holds every method's figures."""
    rng = np.random.default_rng(seed)
    queries = np.unique(samples.query)
    half = set(rng.permutation(queries)[: len(queries) // 2].tolist())
    fold = np.fromiter((q in half for q in samples.query), dtype=bool, count=len(samples.query))
    report = {}
    for method in METHODS:
        prob = np.empty(len(samples.label))
        for train_mask in (fold, ~fold):
            cal = fit_method(method, samples.subset(train_mask), families)
            test_mask = ~train_mask
            prob[test_mask] = cal._apply(samples.log_p[test_mask], samples.family[test_mask])
        m = calibration_metrics(prob, samples.label)
        m.pop("curve")
        report[method] = m
        log.info("calibration %-16s cross-fitted valid log-loss %.4f ECE %.4f", method, m["log_loss"], m["ece"])
    best = choose_method(report)
    cal = fit_method(best, samples, families)
    cal.report = {"selected_by": f"2-fold cross-fitted validation log-loss, among maps within {ECE_SLACK} of the best ECE", "validation": report, "samples": int(len(samples.label)), "candidates": CANDIDATES}
    return cal


__all__ = ["CANDIDATES", "Calibration", "ECE_SLACK", "METHODS", "choose_method", "Samples", "calibration_metrics", "collect_samples", "fit_calibration", "relation_families"]
