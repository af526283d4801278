"""The training hyperparameters: one dataclass, stored in every bundle's manifest, and the
source of `imf train`'s options (model.config: defaults and help text live here only)."""

from __future__ import annotations

from dataclasses import dataclass

from model.config import fraction, positive_int, setting
from model.kg.dataset import BUILTIN_DATASETS


def modality_list(text: str) -> list[str]:
    """'text,numeric' -> ['text', 'numeric']; 'none' -> [] (structure only)."""
    if text.strip().lower() in ("none", ""):
        return []
    return [m.strip() for m in text.split(",") if m.strip()]


def negatives_or_auto(text: str) -> int | None:
    """'auto' -> None (chosen by the graph's size); '0' or 'all' -> 0 (1-vs-all); else K > 0."""
    t = text.strip().lower()
    if t == "auto":
        return None
    if t in ("0", "all"):
        return 0
    return positive_int(text)


def count_or_all(text: str) -> int | None:
    """A positive count, or None for "0" / "none" (all)."""
    return None if text.strip().lower() in ("0", "none") else positive_int(text)


@dataclass
class TrainConfig:
    """Training hyperparameters (stored in the bundle's manifest)."""

    dataset: str = setting("fb15k-237", f"built-in name ({', '.join(BUILTIN_DATASETS)}) or a dataset directory", required=True)
    modalities: list[str] | None = setting(None, "comma list of feature modalities, or 'none' for structure only (default: the dataset's)", parse=modality_list)
    epochs: int = setting(50, "epochs to run (with --init-from: counting the bundle's)", parse=positive_int)
    batch_size: int = setting(256, "training queries per step", parse=positive_int)
    lr: float = setting(0.001, "Adam learning rate")
    lr_decay: float = setting(1.0, "per-epoch multiplicative learning-rate decay")
    loss: str = setting("ce", "ce: per-branch softmax cross-entropy + their mixture; bce: the paper's binary cross-entropy", choices=("ce", "bce"))
    label_smoothing: float | None = setting(None, "label smoothing (default: 0 for ce, 0.1 for bce, the paper's)", parse=fraction)
    # ce: weight each query by its number of answers (per-triple 1-vs-all cross-entropy); None:
    # True for ce (higher validation MRR at equal epochs, docs/benchmarks.md section 2.3), False for bce
    per_answer: bool | None = setting(None, {
        "--per-answer": "ce: weight each query by its number of answers, i.e. per-triple 1-vs-all cross-entropy (the default with ce)",
        "--per-query": "ce: weight every query alike (answers share one unit of target mass)",
    }, flags={"--per-answer": True, "--per-query": False})
    # Sampled training (model.training.sampling): each batch is scored against its own answers
    # plus K shared negatives instead of all N entities. None (auto): the graph's size decides
    # (model.training.sizing.training_negatives); 0: 1-vs-all.
    negatives: int | None = setting(None, "sampled training: score each batch against its answers + K shared random negatives "
                                    "(sampled softmax, docs/training.md); 0 or all: 1-vs-all over every entity; auto (default): "
                                    "sampled with K=4096 above 200,000 entities, else 1-vs-all", parse=negatives_or_auto, metavar="K")
    negative_sampling: str = setting("uniform", "sampled training: the negatives' distribution, uniform or frequency "
                                     "(training-triple degree^0.75)", choices=("uniform", "frequency"))
    contrastive_weight: float = setting(0.0, "lambda of the contrastive loss; 0 disables it (docs/benchmarks.md measures it)")
    temperature: float = setting(0.1, "tau of the contrastive loss")
    contrastive_size: int = setting(512, "entities per batch in the contrastive loss", parse=positive_int)
    relation_groups: int = setting(0, "relation-homogeneous chunks per batch (0: uniformly random batches, the default; >0 costs quality)")
    seed: int = setting(0, "random seed (initialisation, batches, validation subset)")
    device: str = setting("cpu", "cpu, cuda, cuda:1, ...")
    threads: int | None = setting(None, "torch CPU threads (default: torch's choice)", parse=positive_int)
    eval_every: int = setting(1, "epochs between validation runs", parse=positive_int)
    patience: int = setting(5, "validation runs without improvement before stopping", parse=positive_int)
    valid_subset: int | None = setting(3000, "validation triples for early stopping (0 or none: all)", parse=count_or_all)
    max_minutes: float | None = setting(None, "wall-time budget of the whole run (a resumed run counts its earlier parts); keeps the best model so far")
    eval_batch_size: int = setting(256, "queries per validation batch", parse=positive_int)
    precision: str = setting("auto", "training matmuls; auto: bf16 on a CUDA GPU with bf16, fp32 elsewhere", choices=("auto", "fp32", "bf16"))
    init_from: str | None = setting(None, "continue training from this bundle (full or compact), with its model options unless given here; "
                                    "--epochs counts all epochs; a larger --relation-dim than the bundle's widens its model (same scores to start with)")

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "lr_decay": 0 < self.lr_decay <= 1,
            "loss": self.loss in ("ce", "bce"),
            "label_smoothing": self.label_smoothing is None or 0 <= self.label_smoothing < 1,
            "per_answer": not self.per_answer or self.loss == "ce",
            "negatives": self.negatives is None or self.negatives >= 0,
            "negative_sampling": self.negative_sampling in ("uniform", "frequency"),
            "contrastive_weight": self.contrastive_weight >= 0,
            "temperature": self.temperature > 0,
            "contrastive_size": self.contrastive_size >= 2,
            "relation_groups": self.relation_groups >= 0,
            "eval_every": self.eval_every >= 1,
            "patience": self.patience >= 1,
            "valid_subset": self.valid_subset is None or self.valid_subset >= 1,
            "max_minutes": self.max_minutes is None or self.max_minutes > 0,
            "precision": self.precision in ("auto", "fp32", "bf16"),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training parameter(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")
        if self.label_smoothing is None:
            self.label_smoothing = 0.1 if self.loss == "bce" else 0.0
        if self.negatives and (self.loss != "ce" or self.label_smoothing):
            raise ValueError(
                f"sampled training (negatives={self.negatives}) needs loss 'ce' without label smoothing "
                "(both others need every entity's logit); pass --negatives 0 for 1-vs-all"
            )
        if self.per_answer is None:
            self.per_answer = self.loss == "ce"

    @property
    def output(self) -> str:
        """The model's branch probability that this loss trains (IMFConfig.output)."""
        return "softmax" if self.loss == "ce" else "sigmoid"
