"""Entities the model never saw in training, embedded from their features alone.

Every branch needs a row for a new entity e with text features x_t (and maybe numeric x_n):

    text      C_text[e]    = proj_text(x_t) (+ predicted residual)        the model's own projection
    numeric   C_num[e]     = proj_num(x_n) or the learned missing vector  (+ predicted residual)
    structure C_struct[e]  = ridge map of the features, or the mean structure row
    multimodal             = the model's bilinear fusion of the three rows above

The ridge map X -> [structure row, residual_text, residual_numeric] is fitted on the trained
entities, X = [x_t or 0, has_text, x_n or 0, has_numeric, 1] (`design_matrix`): the residuals
are what training added on top of each projection (table minus projection), so the map learns
what the features say about them. Which variant serves (`VARIANTS`) is chosen by a
pseudo-inductive check on the validation split: 10% of the trained entities get the rows the
map predicts for them (fitted on the other 90%), and the validation triples touching them are
ranked (filtered MRR, both directions). The test split is never read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from model.evaluation.ranking import rank_triples
from model.features.numeric import numeric_row
from model.kg.triples import AnswerIndex
from model.network.imf import FUSED, IMF, MULTIMODAL, STRUCTURE

log = logging.getLogger(__name__)

VARIANTS = ("ridge+residual", "ridge", "mean+residual", "mean")
RIDGE_LAMBDAS = (0.1, 1.0, 10.0, 100.0)
CHECK_SHARE = 0.1  # share of trained entities used by the pseudo-inductive check


def design_matrix(model: IMF, feats: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> np.ndarray:
    """X (M, sum_m (f_m + 1) + 1): each modality's features (0 where absent) and presence bit,
    in the model's modality order, then a constant 1."""
    m_rows = len(next(iter(present.values()))) if present else 0
    cols = []
    for m in model.modalities:
        f = np.asarray(feats[m], dtype=np.float64).reshape(m_rows, -1)
        p = np.asarray(present[m], dtype=bool).reshape(m_rows)
        cols += [np.where(p[:, None], f, 0.0), p[:, None].astype(np.float64)]
    cols.append(np.ones((m_rows, 1)))
    return np.concatenate(cols, axis=1)


@torch.no_grad()
def projected(model: IMF, modality: str, x: np.ndarray, present: np.ndarray) -> Tensor:
    """The modality's projection of features x (M, f), or its missing vector where absent: (M, d)."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    proj = model.projection[modality](xt)
    pres = torch.as_tensor(np.asarray(present, dtype=bool))
    return torch.where(pres[:, None], proj, model.missing[modality].expand_as(proj))


@torch.no_grad()
def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """argmin_W |XW - Y|^2 + lam |W|^2 (the constant column unpenalised): (F, D)."""
    reg = lam * np.eye(x.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(x.T @ x + reg, x.T @ y)


@dataclass
class FeatureMap:
    """The fitted map and the serving variant; saved in a bundle as inductive.safetensors."""

    variant: str
    weights: np.ndarray  # (F, d * (1 + num_modalities)): structure row, then each modality's residual
    structure_mean: np.ndarray  # (d,)
    numeric_attributes: list[str] = field(default_factory=list)  # raw numeric attributes accepted
    numeric_mean: np.ndarray | None = None  # (A,) of sign(x) log1p|x| over the training entities
    numeric_std: np.ndarray | None = None  # (A,)
    report: dict = field(default_factory=dict)

    def to_tensors(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        t = {"weights": torch.from_numpy(self.weights.astype(np.float16)),  # float16: half the size, far below the fit error
              "structure_mean": torch.from_numpy(self.structure_mean.astype(np.float32))}
        if self.numeric_mean is not None and self.numeric_std is not None:
            t["numeric_mean"] = torch.from_numpy(self.numeric_mean.astype(np.float32))
            t["numeric_std"] = torch.from_numpy(self.numeric_std.astype(np.float32))
        meta = {"variant": self.variant, "numeric_attributes": json.dumps(self.numeric_attributes), "report": json.dumps(self.report)}
        return t, meta

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], meta: dict[str, str]) -> FeatureMap:
        if meta.get("variant") not in VARIANTS or "weights" not in t or "structure_mean" not in t:
            raise ValueError("not a feature map: 'variant', 'weights' or 'structure_mean' missing")
        return cls(
            variant=meta["variant"],
            weights=t["weights"].double().numpy(),
            structure_mean=t["structure_mean"].double().numpy(),
            numeric_attributes=json.loads(meta.get("numeric_attributes", "[]")),
            numeric_mean=t["numeric_mean"].double().numpy() if "numeric_mean" in t else None,
            numeric_std=t["numeric_std"].double().numpy() if "numeric_std" in t else None,
            report=json.loads(meta.get("report", "{}")),
        )

    def numeric_features(self, values: dict[str, float]) -> np.ndarray:
        """Raw attribute values -> the numeric feature row (2A,) as at training
        (model.features.numeric: z-scored sign(x) log1p|x|, clipped, presence bits)."""
        if self.numeric_mean is None or self.numeric_std is None:
            raise ValueError("this bundle's feature map has no numeric statistics")
        return numeric_row(values, self.numeric_attributes, self.numeric_mean, self.numeric_std)

    @torch.no_grad()
    def embed(self, model: IMF, feats: dict[str, np.ndarray], present: dict[str, np.ndarray], variant: str | None = None) -> dict[str, Tensor]:
        """Rows of every branch for new entities: feats[m] (M, f_m), present[m] (M,) -> (M, d) each."""
        variant = variant or self.variant
        d = model.cfg.dim
        x = design_matrix(model, feats, present)
        pred = torch.from_numpy(x @ self.weights).float()  # (M, d * (1 + n_mod))
        rows: dict[str, Tensor] = {}
        if variant.startswith("ridge"):
            rows[STRUCTURE] = pred[:, :d]
        else:
            rows[STRUCTURE] = torch.from_numpy(self.structure_mean).float().expand(x.shape[0], d).clone()
        for i, m in enumerate(model.modalities):
            base = projected(model, m, feats[m], present[m])
            if variant.endswith("+residual"):
                base = base + pred[:, d * (i + 1):d * (i + 2)]
            rows[m] = base
        if model.modalities:
            rows[MULTIMODAL] = model.entity_fusion([rows[STRUCTURE], *(rows[m] for m in model.modalities)])
        return rows


@torch.no_grad()
def targets(model: IMF, feats: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> np.ndarray:
    """Y (N, d * (1 + n_mod)) of the trained entities: the structure row, then each modality's
    table minus its projection (the residual training learned)."""
    tables = model.entity_tables()
    parts = [tables[STRUCTURE].double().numpy()]
    for m in model.modalities:
        parts.append((tables[m] - projected(model, m, feats[m], present[m])).double().numpy())
    return np.concatenate(parts, axis=1)


@torch.no_grad()
def _check_mrr(model: IMF, rows: dict[str, Tensor], ids: np.ndarray, valid: np.ndarray, known: AnswerIndex) -> float:
    """Filtered MRR of the valid triples touching `ids` with those entities' rows replaced."""
    tables = {b: t.clone() for b, t in model.entity_tables().items()}
    idx = torch.from_numpy(ids)
    for b in tables:
        tables[b][idx] = rows[b]
    sel = np.isin(valid[:, 0], ids) | np.isin(valid[:, 2], ids)
    if not sel.any():
        return float("nan")
    ranks = rank_triples(model, valid[sel], known, tables=tables)
    both = np.concatenate([r[FUSED] for r in ranks.values()])
    return float(np.mean(1.0 / both))


def fit_feature_map(
    model: IMF,
    feats: dict[str, np.ndarray],
    present: dict[str, np.ndarray],
    valid: np.ndarray,
    known: AnswerIndex,
    *,
    numeric: tuple[list[str], np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
) -> FeatureMap:
    """Fit the map on the trained entities and choose the variant (module docstring).

    feats/present: each modality's features of all N trained entities (rows in model order).
    numeric: (attributes, mean, std) of the raw numeric normalisation, when known.
    """
    model.eval()
    n = model.cfg.num_entities
    x = design_matrix(model, feats, present)
    y = targets(model, feats, present)
    rng = np.random.default_rng(seed)
    check = np.sort(rng.choice(n, size=max(1, int(CHECK_SHARE * n)), replace=False))
    rest = np.setdiff1d(np.arange(n), check)
    # lambda by the held-out entities' squared error of the structure row
    d = model.cfg.dim
    errs = {}
    for lam in RIDGE_LAMBDAS:
        w = ridge(x[rest], y[rest], lam)
        errs[lam] = float(np.mean((x[check] @ w - y[check]) ** 2))
    lam = min(errs, key=errs.get)
    w_rest = ridge(x[rest], y[rest], lam)
    probe = FeatureMap("ridge", w_rest, y[rest, :d].mean(axis=0))
    sub_feats = {m: feats[m][check] for m in model.modalities}
    sub_present = {m: present[m][check] for m in model.modalities}
    report: dict = {"lambda": lam, "lambda_mse": {str(k): v for k, v in errs.items()}, "check_entities": int(len(check))}
    base = {b: t[torch.from_numpy(check)] for b, t in model.entity_tables().items()}
    report["check_valid_mrr"] = {"trained rows": _check_mrr(model, base, check, valid, known)}
    for variant in VARIANTS:
        rows = probe.embed(model, sub_feats, sub_present, variant)
        report["check_valid_mrr"][variant] = _check_mrr(model, rows, check, valid, known)
    best = max(VARIANTS, key=lambda v: report["check_valid_mrr"][v])
    log.info("feature map: lambda %s, pseudo-inductive valid MRR %s -> %s", lam, {k: round(v, 4) for k, v in report["check_valid_mrr"].items()}, best)
    fmap = FeatureMap(best, ridge(x, y, lam), y[:, :d].mean(axis=0), report=report)
    if numeric is not None:
        fmap.numeric_attributes, fmap.numeric_mean, fmap.numeric_std = numeric[0], numeric[1], numeric[2]
    return fmap


__all__ = ["FeatureMap", "VARIANTS", "design_matrix", "fit_feature_map"]
