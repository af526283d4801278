"""Training IMF: 1-N scoring with reciprocal relations, per-branch + fused loss, contrastive loss.

One epoch visits every distinct training query (e, r') once, in both directions (tails (h, r)
and heads (t, r^-1)), in uniformly shuffled batches. Each query is scored against all N entities
by every branch; the loss is (`loss="ce"`, the default)

    sum_b CE(softmax s_b, y) + CE(sum_b w_b softmax s_b, y) + lambda * InfoNCE(modality embeddings)

with y the query's training answers normalised to sum 1, each query's terms weighted by its
number of answers (`per_answer`, the default: the mean over training triples, as the evaluation
counts them; higher validation MRR at equal epochs than weighting every query alike), or
(`loss="bce"`, the paper's)
sum_b BCEWithLogits(s_b, y') + BCE(sum_b w_b sigmoid s_b, y') with label-smoothed 0/1 targets
y'. Cross-entropy learns far faster in the first epochs. docs/benchmarks.md section 2.3 measures
each of these choices at equal epochs.
Sampled training (`negatives` = K > 0; by default above 200,000 entities, model.training.sizing):
each batch is scored against its own answers plus K shared random negatives with the logQ
correction, the entity tables computed for the touched entities only
(model.training.sampling; docs/training.md). With K = 0 nothing of the above changes.
Model selection and early stopping use the validation split only (filtered MRR of the fused
model); the test split is never looked at here.

Batches are uniformly random: BatchNorm then sees the same mix of entity types and relations
in every batch as at evaluation, and each step's gradient covers many relations. (Batches built
from a few relation-homogeneous chunks, `relation_groups`, are cheaper per step on a CPU but lose
much of the validation MRR at equal epochs; they remain as an option for measurements.) The
relation core transform (d_r x d x d per relation) is still built once per distinct relation
of a batch.

Runs that can stop and go on. With a run directory (model.training.checkpoint) every epoch ends
by writing a checkpoint of everything the next epoch depends on (weights, optimizer and
scheduler states, every random generator, the early-stopping state) and metrics.csv, so
`train(..., run_dir=RUN, resume=True)` continues a killed run exactly: on the same device and
thread count it reaches the same weights, bit for bit, as a run never stopped. Ctrl-C
(KeyboardInterrupt) after the first validation, like the time budget, ends the run with the
best model so far (`stopped_by` "interrupted"); the checkpoint stays that of the last complete
epoch, from which a resumed run goes on.

Several processes (torchrun; model.training.distributed): when a process group of more than one
process is initialised, `train` runs data-parallel. The ranks share each global batch of
`batch_size` queries (the very batches of one process), gradients are all-reduced
(DistributedDataParallel), BatchNorm normalises over the global batch, and rank 0 alone
evaluates, checkpoints and decides when the run ends. Its checkpoints are those of a single
process, so a run resumes on any number of processes. Without a process group nothing changes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from model import __version__
from model.bundle.format import load_bundle, read_manifest
from model.config import option_fields
from model.errors import BundleError, TrainingDiverged
from model.evaluation.ranking import evaluate
from model.kg.dataset import KGDataset, load_dataset
from model.kg.triples import AnswerIndex
from model.network.imf import IMF, STRUCTURE, TRAINING_ONLY_FIELDS, IMFConfig
from model.network.losses import (
    contrastive_loss,
    fusion_bce,
    mixture_cross_entropy,
    smoothed_targets,
)
from model.training.checkpoint import (
    METRICS,
    RunError,
    load_checkpoint,
    prepare_run_dir,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    world_size_of,
)
from model.training.config import TrainConfig
from model.training.distributed import (
    Group,
    current,
    use_global_batchnorm,
    use_local_batchnorm,
)
from model.training.sampling import (
    LazyAdam,
    NegativeSampler,
    SampledForward,
    draw_sample,
    entity_degrees,
    sampled_training_loss,
    sparse_entity_tables,
)
from model.training.sizing import training_negatives
from model.training.tracking import metrics_writer

log = logging.getLogger(__name__)

# What a resumed run may change: how long it goes on, where and how fast it runs, and where its
# dataset is (its content is checked: the fingerprint). Anything else would make it another run
# than the one its checkpoint holds.
RESUMABLE_CHANGES = ("epochs", "max_minutes", "device", "threads", "eval_batch_size", "dataset")
# What a checkpoint written before a training option existed ran with.
LEGACY_TRAIN_SETTINGS = {"negatives": 0, "negative_sampling": "uniform"}

EpochHook = Callable[[Mapping[str, Any]], None]


@dataclass
class TrainResult:
    model: IMF
    dataset: KGDataset
    model_config: IMFConfig
    train_config: TrainConfig
    valid_metrics: dict
    history: list[dict] = field(default_factory=list)
    epochs_run: int = 0
    best_epoch: int = 0
    seconds: float = 0.0
    stopped_by: str = "epochs"  # "epochs", "early stopping", "time budget" or "interrupted"
    run_dir: Path | None = None


def batch_order(query_relations: np.ndarray, batch_size: int, groups: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches of query indices.

    query_relations: (Q,) relation of each query. groups == 0: a uniform permutation cut into
    batches. groups > 0: each relation's queries are shuffled and cut into chunks of
    batch_size // groups; the chunks are shuffled and concatenated, then cut into batches, so a
    batch holds about `groups` relations. Deterministic for a given `rng` state.

    A last batch of a single query is merged into the one before: BatchNorm cannot normalise a
    batch of one in training mode.
    """
    q = len(query_relations)
    perm = rng.permutation(q)
    if groups > 0:
        chunk = max(1, batch_size // groups)
        order = perm[np.argsort(query_relations[perm], kind="stable")]  # by relation, shuffled within
        rels = query_relations[order]
        new_run = np.r_[True, rels[1:] != rels[:-1]]
        run_id = np.cumsum(new_run) - 1
        run_start = np.flatnonzero(new_run)
        within = np.arange(q) - run_start[run_id]
        chunk_key = run_id.astype(np.int64) * (q + 1) + within // chunk
        _, chunk_id = np.unique(chunk_key, return_inverse=True)
        chunk_rank = rng.permutation(int(chunk_id.max()) + 1)
        perm = order[np.lexsort((np.arange(q), chunk_rank[chunk_id]))]
    batches = [perm[i:i + batch_size] for i in range(0, q, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on a CUDA device that supports bfloat16, else 'fp32'.

    Decided by the device alone, never by a timing probe, so a seeded run gives the same result
    whatever else the machine is doing. Parameters, optimizer state, losses and evaluation stay
    float32 either way; only training matmuls use bf16 (pass precision="bf16" to try it on a CPU).
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def resolve_negatives(cfg: TrainConfig, num_entities: int) -> TrainConfig:
    """`cfg` with `negatives` decided (None, auto: by the graph's size,
    model.training.sizing.training_negatives), the training mode logged with the reason."""
    k = cfg.negatives
    if k is None:
        if cfg.loss != "ce" or cfg.label_smoothing:
            k, why = 0, "1-vs-all scoring (sampled training needs --loss ce without label smoothing)"
        else:
            k, why = training_negatives(num_entities)
        log.info("training mode (--negatives auto): %s", why)
    elif k > 0:
        log.info("training mode: sampled softmax, each batch against its answers + %d shared %s negatives (--negatives %d)", k, cfg.negative_sampling, k)
    else:
        log.info("training mode: 1-vs-all scoring against all %s entities (--negatives 0)", f"{num_entities:,}")
    return dataclasses.replace(cfg, negatives=k)


def build_model(dataset: KGDataset, modalities: list[str] | None, cfg: IMFConfig) -> IMF:
    """An untrained IMF for `dataset` with the chosen feature modalities (validated by name):
    `cfg`'s hyperparameters, with the graph's sizes and modality dimensions filled in."""
    mods = dataset.select_modalities(modalities)
    cfg = dataclasses.replace(
        cfg,
        num_entities=dataset.num_entities,
        num_relations=dataset.num_relations,
        modalities={m: f.dim for m, f in mods.items()},
    )
    return IMF(
        cfg,
        {m: torch.from_numpy(f.matrix) for m, f in mods.items()},
        {m: torch.from_numpy(f.present) for m, f in mods.items()},
    )


def training_loss(
    model: IMF,
    heads: torch.Tensor,
    rels: torch.Tensor,
    answers: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    generator: torch.Generator | None = None,
    *,
    forward: Callable[..., Any] | None = None,
    share: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one batch. heads, rels: (B,); answers: (positions, entities), (P,) each, the
    training answers of the batch's queries as (row, entity) pairs. Returns (loss, parts), the
    parts detached (tensors, so that a GPU is not synchronised every step).

    forward: what computes model(heads, rels) (in a data-parallel run, the
    DistributedDataParallel wrapper of `model`); share: the factor on the branch and fused
    terms that makes this batch a rank's shard of a global batch
    (model.training.distributed.Group.share); the contrastive term and the parts are not scaled."""
    with torch.autocast(heads.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        logits, weights, tables = (forward or model)(heads, rels)
    branch_logits = [logits[b] for b in model.branches]
    # Losses in float32 whatever the matmul precision (both loss functions cast).
    if cfg.loss == "ce":
        log_w = torch.log(weights.float())  # softmax outputs: strictly positive
        values = mixture_cross_entropy(branch_logits, log_w, answers[0], answers[1], cfg.label_smoothing or 0.0, bool(cfg.per_answer))
    else:
        labels = torch.zeros(heads.shape[0], model.cfg.num_entities, device=heads.device)
        labels[answers] = 1.0
        values = fusion_bce(branch_logits, weights, smoothed_targets(labels, cfg.label_smoothing or 0.0))
    parts: dict[str, torch.Tensor] = {b: values[i] for i, b in enumerate(model.branches)}
    parts["fused"] = values[-1]
    loss = sum(parts.values())
    if share != 1.0:
        loss = loss * share
    if cfg.contrastive_weight > 0 and model.modalities:
        # A random set of entities (a permutation slice: no duplicates, no host sync).
        n = model.cfg.num_entities
        ents = torch.randperm(n, generator=generator)[: cfg.contrastive_size].to(heads.device)
        names = [STRUCTURE, *model.modalities]
        emb = {b: tables[b][ents].float() for b in names}
        pres = {STRUCTURE: torch.ones_like(ents, dtype=torch.bool), **{m: model.present(m)[ents] for m in model.modalities}}
        parts["contrastive"] = contrastive_loss(emb, pres, cfg.temperature)
        loss = loss + cfg.contrastive_weight * parts["contrastive"]
    return loss, {k: v.detach() for k, v in parts.items()}


def bundle_model_settings(path: str | Path) -> IMFConfig:
    """The model hyperparameters (the `setting` fields of IMFConfig) of the bundle at `path`,
    the graph's sizes left out: what a run continued from it builds by default."""
    theirs = read_manifest(Path(path))["model_config"]
    names = {f.name for f in option_fields(IMFConfig)}
    try:
        return IMFConfig(**{k: v for k, v in theirs.items() if k in names})
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{path}: invalid model_config: {exc}") from exc


def model_settings(cfg: IMFConfig) -> dict[str, Any]:
    """The hyperparameters of a model configuration (its `setting` fields and `output`)."""
    return {f.name: getattr(cfg, f.name) for f in option_fields(IMFConfig)} | {"output": cfg.output}


def train(
    cfg: TrainConfig,
    dataset: KGDataset | None = None,
    *,
    model_config: IMFConfig | None = None,
    progress: bool = True,
    run_dir: str | Path | None = None,
    resume: bool = False,
    on_epoch: Sequence[EpochHook] = (),
    run_info: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train IMF on `cfg.dataset` (or the given dataset) and return the best model on valid.

    model_config: the model's hyperparameters (dim, relation_dim, fusion_rank, dropouts,
    feature_residual, decision_fusion; the graph's sizes are filled in, `output` follows
    cfg.loss); default IMFConfig(), or with cfg.init_from the bundle's, or when resuming the
    checkpoint's.
    run_dir: write a checkpoint and metrics.csv there after every epoch (model.training.checkpoint);
    a fresh run refuses a directory that already holds a checkpoint.
    resume: continue the run whose checkpoint is in `run_dir`, from its last complete epoch.
    `cfg` and `model_config` must be the run's own except RESUMABLE_CHANGES (a longer run, a
    larger time budget: RunError otherwise); `cfg.init_from` is not read again.
    on_epoch: called after each epoch (after its checkpoint is written) with its history record
    (trackers; a hook that raises KeyboardInterrupt stops the run like Ctrl-C).
    run_info: stored as is in the checkpoint ("run"), for whoever resumes it (the CLI keeps the
    bundle path and options there).

    Ctrl-C after the first validation run ends training with the best model so far
    (stopped_by "interrupted"); before it, the KeyboardInterrupt propagates.

    Under an initialised process group of W > 1 processes (torchrun: model.cli.train joins it,
    model.training.distributed) every rank calls `train` with the same arguments; the run is
    data-parallel (see the module docstring). Rank 0 alone writes the run directory, calls
    `on_epoch`, shows progress, and returns the selected model with its full validation
    metrics; the other ranks return their copy of the last weights with empty metrics. A
    resumed run reads the checkpoint on every rank (the run directory must be visible to all).
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir to resume")
    ckpt = load_checkpoint(run_dir) if resume else None  # type: ignore[arg-type]
    group = current()  # None: a single process, as always
    main = group is None or group.main
    world = 1 if group is None else group.world_size
    progress = progress and main
    if model_config is None:
        if ckpt is not None:
            model_config = IMFConfig(**{k: v for k, v in ckpt["model_settings"].items() if k != "output"})
        elif cfg.init_from:
            model_config = bundle_model_settings(cfg.init_from)
    model_cfg = dataclasses.replace(model_config or IMFConfig(), output=cfg.output)
    started = time.monotonic()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device) if group is None else group.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if group is not None:
        # Rank 0 comes here once train_to_bundle has built any missing features of the dataset.
        group.barrier()
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset)
    model = build_model(dataset, cfg.modalities, model_cfg).to(device)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
    cfg = resolve_negatives(cfg, dataset.num_entities)
    if ckpt is not None:
        _check_resumable(run_dir, ckpt, cfg, model_cfg, dataset)  # type: ignore[arg-type]
    elif run_dir is not None and main:
        prepare_run_dir(run_dir, overwrite=False)
    if group is not None:
        _check_same_run(group, cfg, model_cfg, dataset, ckpt)
    log.info(
        "IMF on %s: branches %s, %s parameters, device %s, %s matmuls",
        dataset.name, model.branches, f"{model.num_parameters():,}", device, cfg.precision,
    )
    train_index = AnswerIndex(dataset.train, dataset.num_entities, dataset.num_relations)
    known_index = AnswerIndex(dataset.all_triples(), dataset.num_entities, dataset.num_relations)
    q_ents, q_rels = train_index.query_entities(), train_index.query_relations()
    valid = dataset.valid
    if cfg.valid_subset is not None and cfg.valid_subset < len(valid):
        valid = valid[np.sort(np.random.default_rng(cfg.seed + 1).choice(len(valid), cfg.valid_subset, replace=False))]

    # fused=True: one kernel for the whole update; the unfused CPU Adam costs more than the
    # forward pass here (tens of millions of core-tensor parameters).
    # Sampled training in one process: sparse gradients on the entity tables, Adam on the rows
    # touched (model.training.sampling.LazyAdam): no step then costs O(N).
    lazy = bool(cfg.negatives) and group is None
    sparse_entity_tables(model, lazy)
    optimizer = (LazyAdam if lazy else torch.optim.Adam)((p for p in model.parameters() if p.requires_grad), lr=cfg.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    best_mrr, best_state, best_epoch = -math.inf, None, 0
    stale = 0
    history: list[dict] = []
    stopped_by = "epochs"
    first_epoch, train_seconds, earlier_wall_s = 1, 0.0, 0.0
    if ckpt is not None:
        # Everything the next epoch depends on, as the last complete epoch left it; the random
        # generators last, after building the model drew its initial weights from them.
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        restore_rng_states(ckpt["rng"], rng, gen)
        best_mrr, best_epoch, stale = float(ckpt["best_mrr"]), int(ckpt["best_epoch"]), int(ckpt["stale"])
        best_state = ckpt["best_state"]
        history = [dict(h) for h in ckpt["history"]]
        first_epoch, train_seconds, earlier_wall_s = int(ckpt["epoch"]) + 1, float(ckpt["train_seconds"]), float(ckpt["wall_s"])
        log.info("resuming %s after epoch %d (best valid MRR %.4f @ %d)", run_dir, first_epoch - 1, best_mrr, best_epoch)
    elif cfg.init_from:
        # Continue a run: its weights, its history (epochs and training time go on counting), and
        # its best validation score as the one to beat. Adam's moments start afresh.
        history, first_epoch, train_seconds, best_mrr, best_epoch = _continue_from(cfg.init_from, model)
        best_state = copy.deepcopy(model.state_dict())
        model.to(device)
    net: Callable[..., Any] | None = None  # what runs the forward pass, when it is not `model` itself
    if group is not None:
        use_global_batchnorm(model)  # the same Parameter objects: the optimizer's stay valid
        # Sampled training: the same Parameter objects behind a module whose forward is the
        # subset scoring (model.training.sampling; every rank draws the same negatives).
        net = group.wrap(model if not cfg.negatives else SampledForward(model), device)
        log.info(
            "data-parallel on %d processes (%s): each global batch of %d queries in shards of about %d",
            world, group.backend, cfg.batch_size, -(-cfg.batch_size // world),
        )
    if ckpt is not None and world_size_of(ckpt) != world:
        log.info(
            "the checkpoint was written by %d process(es); the run goes on with the same global batches on %d "
            "(only dropout masks and float rounding differ from going on with %d)",
            world_size_of(ckpt), world, world_size_of(ckpt),
        )
    sampler = None
    if cfg.negatives:
        degrees = entity_degrees(dataset.train, dataset.num_entities) if cfg.negative_sampling == "frequency" else None
        sampler = NegativeSampler(dataset.num_entities, int(cfg.negatives), cfg.negative_sampling, degrees)
    # Per-answer cross-entropy weighs each query by its number of answers (model.network.losses):
    # a rank's share of a global batch is its share of that weight.
    query_weight = None if group is None else np.diff(train_index.offsets).astype(np.float64) if cfg.loss == "ce" and cfg.per_answer else np.ones(len(q_ents))
    # The time budget counts the whole run: a resumed one has used part of it already.
    deadline = started + cfg.max_minutes * 60 - earlier_wall_s if cfg.max_minutes else math.inf
    if ckpt is not None and time.monotonic() > deadline:
        raise RunError(
            f"{run_dir}: the time budget of {cfg.max_minutes:g} minutes is used up ({earlier_wall_s / 60:.1f} so far); pass a larger --max-minutes to go on"
        )
    last_done = first_epoch - 1  # the last complete epoch
    bar = None
    try:
        for epoch in range(first_epoch, cfg.epochs + 1):
            model.train()
            batches = batch_order(q_rels, cfg.batch_size, cfg.relation_groups, rng)
            if group is not None:
                batches = group.batches(batches)
                if not group.main:
                    torch.manual_seed(group.dropout_seed(cfg.seed, epoch))  # this rank's own dropout masks
            t0 = time.monotonic()
            seen = 0
            loss_sum = torch.zeros((), device=device)
            lr = float(optimizer.param_groups[0]["lr"])
            bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not progress, leave=False)
            out_of_time = False
            for step, idx in enumerate(bar):
                part, share = idx, 1.0  # this process's queries of the batch, and its share of the loss
                if group is not None:
                    mine = group.shard(len(idx))
                    part, share = idx[mine], group.share(query_weight[idx], mine)  # type: ignore[index]
                ents_np, rels_np = q_ents[part], q_rels[part]
                heads = torch.from_numpy(ents_np).to(device)
                rels = torch.from_numpy(rels_np).to(device)
                pos, ans = train_index.pairs(train_index.rows(ents_np, rels_np))
                if sampler is None:
                    answers = (torch.from_numpy(pos).to(device), torch.from_numpy(ans).to(device))
                    loss, _ = training_loss(model, heads, rels, answers, cfg, gen, forward=net, share=share)
                else:
                    contrastive = cfg.contrastive_size if cfg.contrastive_weight > 0 and model.modalities else 0
                    sample = draw_sample(sampler, torch.from_numpy(ents_np), torch.from_numpy(ans), gen, contrastive).to(device)
                    loss, _ = sampled_training_loss(model, sample, rels, torch.from_numpy(pos).to(device), cfg, forward=net, share=share)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(idx)
                if group is None:
                    loss_sum += loss.detach() * len(idx)
                else:  # summed over the ranks at the end of the epoch: the global batches' loss
                    loss_sum += loss.detach() * (len(idx) / world)
                # Reading the loss synchronises a GPU: every 10 steps there, every step on a CPU. A
                # non-finite loss poisons the running sum, so a periodic check still catches it.
                if step % 10 == 0 or device.type == "cpu":
                    running = float(loss_sum) * world / seen  # several processes: this rank's shards
                    if not math.isfinite(running):
                        raise TrainingDiverged(
                            f"training diverged: the loss became {float(loss.detach())} at epoch {epoch}, step {step + 1} "
                            f"(lr {cfg.lr}, precision {cfg.precision}); lower --lr or use --precision fp32. Nothing was written."
                        )
                    if progress and step % 10 == 0:
                        rate = seen / max(time.monotonic() - t0, 1e-9)
                        bar.set_postfix(loss=f"{running:.4f}", q_per_s=f"{rate:.0f}")
                if group is None:
                    if time.monotonic() > deadline:
                        out_of_time = True
                        break
                elif deadline < math.inf and (device.type == "cpu" or step % 10 == 0) and group.decide(time.monotonic() > deadline):
                    out_of_time = True  # rank 0's clock decides: every rank stops after the same step
                    break
            bar.close()
            if group is not None:
                group.sum_(loss_sum)
            loss_avg = float(loss_sum) / max(seen, 1)
            if not math.isfinite(loss_avg):  # on a GPU the last steps of an epoch were not checked yet
                raise TrainingDiverged(f"training diverged: the mean loss of epoch {epoch} is {loss_avg}; lower --lr or use --precision fp32. Nothing was written.")
            scheduler.step()
            epoch_s = time.monotonic() - t0
            record = {"epoch": epoch, "loss": loss_avg, "queries": seen, "seconds": epoch_s, "queries_per_s": seen / max(epoch_s, 1e-9), "lr": lr}
            train_seconds += epoch_s
            record["train_s"] = train_seconds  # training wall time so far, validation excluded: learning curves
            if main and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs or out_of_time):
                m = evaluate(model, valid, known_index, split="valid", batch_size=cfg.eval_batch_size, device=device)
                record["valid_mrr"] = m["mrr"]
                record["valid_hits@10"] = m["hits@10"]
                if m["mrr"] > best_mrr:
                    best_mrr, best_epoch, stale = m["mrr"], epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
            history.append(record)
            log.info(
                "epoch %d: loss %.4f, %.0f queries/s, %.1fs%s",
                epoch, record["loss"], record["queries_per_s"], epoch_s,
                f", valid MRR {record['valid_mrr']:.4f} (best {best_mrr:.4f} @ {best_epoch})" if "valid_mrr" in record else "",
            )
            ended = "time budget" if out_of_time else "early stopping" if stale >= cfg.patience else "epochs" if epoch == cfg.epochs else None
            if run_dir is not None and main:
                save_checkpoint(run_dir, {
                    "epoch": epoch,
                    "stopped_by": ended,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_states(rng, gen),
                    "best_mrr": best_mrr,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "stale": stale,
                    "history": history,
                    "train_seconds": train_seconds,
                    "wall_s": earlier_wall_s + time.monotonic() - started,
                    "train_config": dataclasses.asdict(cfg),
                    "model_settings": model_settings(model_cfg),
                    "dataset": dataset.info(),
                    "run": dict(run_info or {}),
                    "library_version": __version__,
                    **({"world_size": world} if group is not None else {}),
                }, also=(metrics_writer(run_dir / METRICS, history),))
            last_done = epoch
            if group is None:
                for hook in on_epoch:
                    hook(record)
            else:
                ended = _end_of_epoch_together(group, on_epoch, record, ended)
            if ended is not None:
                stopped_by = ended
                break
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if not main:
            stopped_by = "interrupted"  # rank 0 keeps the model
        elif best_state is None:
            raise  # nothing validated yet: no model to keep
        else:
            stopped_by = "interrupted"
            log.warning("interrupted after epoch %d: keeping the best model so far (epoch %d, valid MRR %.4f)", last_done, best_epoch, best_mrr)
    sparse_entity_tables(model, False)  # dense gradients again, as a bundle's model has them
    if group is not None:
        net = None
        use_local_batchnorm(model)  # a plain IMF again, as a bundle holds it
        if not main:
            model.eval()
            return TrainResult(
                model=model.cpu(), dataset=dataset, model_config=model.cfg, train_config=cfg, valid_metrics={}, history=history,
                epochs_run=last_done, best_epoch=best_epoch, seconds=time.monotonic() - started, stopped_by=stopped_by, run_dir=run_dir,
            )
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    valid_metrics = evaluate(model, dataset.valid, known_index, split="valid", batch_size=cfg.eval_batch_size, device=device, progress=progress)
    log.info("best epoch %d, full valid MRR %.4f, stopped by %s", best_epoch, valid_metrics["mrr"], stopped_by)
    return TrainResult(
        model=model.cpu(),
        dataset=dataset,
        model_config=model.cfg,
        train_config=cfg,
        valid_metrics=valid_metrics,
        history=history,
        epochs_run=last_done,
        best_epoch=best_epoch,
        seconds=time.monotonic() - started,
        stopped_by=stopped_by,
        run_dir=run_dir,
    )


def _end_of_epoch_together(group: Group, hooks: Sequence[EpochHook], record: Mapping[str, Any], ended: str | None) -> str | None:
    """Rank 0 calls the epoch hooks; then every rank learns rank 0's decision (`ended`, or
    "interrupted" when a hook raised KeyboardInterrupt, which is then raised on every rank).
    Another exception out of a hook ends rank 0, and torchrun the others."""
    interrupted = False
    if group.main:
        try:
            for hook in hooks:
                hook(record)
        except KeyboardInterrupt:
            interrupted = True
    decided = group.stop_code("interrupted" if interrupted else ended)
    if decided == "interrupted":
        raise KeyboardInterrupt
    return decided


def _check_same_run(group: Group, cfg: TrainConfig, model_cfg: IMFConfig, dataset: KGDataset, ckpt: Mapping[str, Any] | None) -> None:
    """IMFError on every rank unless all ranks run the same configuration on the same data from
    the same point (where each rank's files live and which device it uses may differ)."""
    local = ("device", "threads", "eval_batch_size", "dataset")
    group.check_same_run({
        "training": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in local},
        "model": model_settings(model_cfg),
        "dataset fingerprint": dataset.info()["fingerprint"],
        "resumed after epoch": int(ckpt["epoch"]) if ckpt is not None else None,
        "imf version": __version__,
        "torch version": torch.__version__,
    })


def _check_resumable(run_dir: Path, ckpt: Mapping[str, Any], cfg: TrainConfig, model_cfg: IMFConfig, dataset: KGDataset) -> None:
    """RunError unless `cfg`, `model_cfg` and `dataset` are those of the checkpoint's run
    (RESUMABLE_CHANGES aside) and the run has epochs left to go."""
    where = run_dir / "checkpoint.pt"
    theirs = ckpt["train_config"]
    mine = dataclasses.asdict(cfg)
    theirs = {**LEGACY_TRAIN_SETTINGS, **theirs}
    diff = [f"{k} {theirs.get(k)!r} (the run's) vs {v!r}" for k, v in mine.items() if k not in RESUMABLE_CHANGES and theirs.get(k) != v]
    theirs_m = ckpt["model_settings"]
    diff += [f"{k} {theirs_m.get(k)!r} (the run's) vs {v!r}" for k, v in model_settings(model_cfg).items() if theirs_m.get(k) != v]
    if diff:
        raise RunError(f"{where}: a resumed run keeps its configuration (only {', '.join(RESUMABLE_CHANGES)} may change): " + "; ".join(diff))
    if ckpt["dataset"].get("fingerprint") != dataset.info()["fingerprint"]:
        raise RunError(f"{where}: the dataset {dataset.name!r} has changed since this run started (its fingerprint differs); it cannot be resumed on it")
    done, ended = int(ckpt["epoch"]), ckpt.get("stopped_by")
    if ended == "early stopping":
        raise RunError(f"{where}: this run stopped early at epoch {done} (no better validation MRR in {cfg.patience} runs); its best model is in its bundle, nothing to resume")
    if done >= cfg.epochs:
        raise RunError(f"{where}: all {done} epochs of this run are done; pass a larger --epochs to go on")


def _continue_from(path: str, model: IMF) -> tuple[list[dict], int, float, float, int]:
    """Load a bundle's weights into `model` (same configuration) for continued training.

    Returns (history, first epoch to run, training seconds so far, best validation MRR of the
    history, its epoch). A compact bundle (int8 tables, no raw features) is expanded against
    the features `model` was built with: each modality table becomes projection + residual.
    """
    bundle = load_bundle(path)
    # Dropout rates only act while training: a continued run may change them (anneal). A
    # compact bundle is expanded against this run's features (IMF.load_compacted).
    # A larger relation size d_r than the bundle's widens it (IMF.widen_relations: the same
    # scores, more capacity to learn with).
    training_only = (*TRAINING_ONLY_FIELDS, "stored_tables")
    mine, theirs = model.cfg.to_dict(), bundle.model.cfg.to_dict()
    diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v and k not in training_only}
    widen = "relation_dim" in diff and diff["relation_dim"][0] < diff["relation_dim"][1]
    if widen:
        del diff["relation_dim"]
    if diff:
        raise BundleError(f"{path}: model configuration differs from this run's: " + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items()))
    src = bundle.model
    try:
        if widen:
            # The bundle's own size first (expanding a compact bundle against this run's
            # features), then widened into `model`.
            mid = IMF(IMFConfig(**{**mine, "relation_dim": src.cfg.relation_dim}), *_feature_buffers(model))
            if src.cfg.stored_tables:
                mid.load_compacted(src)
            else:
                mid.load_state_dict(src.state_dict())
            model.widen_relations(mid)
            log.info("widened the relation size from %d to %d", src.cfg.relation_dim, model.cfg.relation_dim)
        elif src.cfg.stored_tables:
            model.load_compacted(src)
        else:
            model.load_state_dict(src.state_dict())
    except ValueError as err:
        raise BundleError(f"{path}: {err}") from err
    tr = bundle.manifest.get("training", {})
    history = list(tr.get("history", []))
    scored = [h for h in history if "valid_mrr" in h]
    best = max(scored, key=lambda h: h["valid_mrr"]) if scored else None
    log.info("continuing from %s: %d epochs done, best valid MRR %s", path, len(history), f"{best['valid_mrr']:.4f}" if best else "-")
    return (
        history,
        len(history) + 1,
        float(history[-1].get("train_s", 0.0)) if history else 0.0,
        best["valid_mrr"] if best else -math.inf,
        int(best["epoch"]) if best else 0,
    )


def _feature_buffers(model: IMF) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(features, present) of a trainable model's modalities, to build another model on them."""
    return (
        {m: getattr(model, f"features_{m}") for m in model.modalities},
        {m: model.present(m) for m in model.modalities},
    )
