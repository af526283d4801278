"""Data-parallel training on torch.distributed: what `imf train` does when torchrun starts it.

    torchrun --nproc-per-node 2 -m model train --dataset wn9-img --out artifacts/wn   # gloo on CPU
    torchrun --nproc-per-node 4 -m model train ... --device cuda                     # NCCL, one GPU per rank

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `session` joins the
process group (gloo for --device cpu, NCCL for cuda, each rank on cuda:LOCAL_RANK). Without
torchrun (WORLD_SIZE unset or 1) nothing here runs and training is the single-process loop,
unchanged. docs/training.md has the commands, multi-node included.

How a step is shared (model.training.loop.train):

- Every rank draws the same epoch order (the batch-order generator is seeded and checkpointed
  alike on all ranks) and so the same global batches of `--batch-size` B queries, exactly those
  of a single process. Rank r takes the r-th of W near-equal contiguous shards of each global
  batch (`Group.shard`); DistributedDataParallel all-reduces the gradients.
- The loss of a step is that of the whole global batch, whatever the shards: DDP averages
  gradients over ranks, so rank r's loss is scaled by `share` = W x (its shard's weight) /
  (the global batch's weight), the weight being the number of training answers (per-answer
  cross-entropy, the default) or of queries (per-query, bce). Uneven shards (B not a multiple
  of W, the last batch of an epoch) are thus exact, not approximated; no query is dropped or
  padded. Each rank knows the whole global batch, so this costs no communication.
- BatchNorm normalises over the global batch (`GlobalBatchNorm1d`, which replaces every
  BatchNorm1d while training and is swapped back afterwards; same parameters, buffers and
  state-dict keys): per-rank statistics would make W ranks x B/W queries a different model
  from 1 x B, noisier as B/W shrinks, and would let the running statistics differ between
  ranks. torch's SyncBatchNorm does the same but refuses CPU tensors, hence this one (one
  small all-reduce per BatchNorm in the forward pass, one in the backward).
- With the above and dropout 0, W ranks reach the parameters of one process with the same
  global batch, to float rounding (tests/test_distributed.py). Dropout masks are per rank:
  rank 0 draws from the run's own torch generator (checkpointed); rank r > 0 re-seeds its
  generator at every epoch from (seed, rank, epoch), so its masks are independent of rank
  0's, reproducible, and need no per-rank state in the checkpoint. The decoder's DropConnect
  mask on M(r) (one d x d mask per batch) is one per rank and step: W masks per global batch.
- The contrastive sample comes from the run's torch Generator, identical on every rank: every
  rank adds the same term unscaled, and the average over ranks is that term.
- Rank 0 alone evaluates, selects, checkpoints, calls the epoch hooks and writes the bundle;
  it decides when the run ends (epochs, early stopping, the time budget, checked after every
  step) and broadcasts that, so every rank stops at the same step. The other ranks log
  warnings only and show no progress bar.
- A failure on one rank is logged as "rank R of W failed: ..." and ends that process with an
  error; torchrun then stops the others. A rank left waiting for a peer that never comes gives
  up after IMF_DIST_TIMEOUT_S seconds (default 1800: it must cover rank 0's validation runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from model.errors import IMFError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "IMF_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
# What rank 0 broadcasts at the end of an epoch (None: go on).
STOP_CODES = (None, "epochs", "early stopping", "time budget", "interrupted")


def launched_world_size() -> int:
    """The number of processes torchrun started (WORLD_SIZE), 1 without torchrun."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError as exc:
        raise IMFError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from exc


def launched_rank() -> int:
    """This process's rank under torchrun (RANK), 0 without it."""
    return int(os.environ.get("RANK", "0"))


def timeout_s() -> float:
    """How long a rank waits in a collective for the others (IMF_DIST_TIMEOUT_S, seconds)."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise IMFError(f"{TIMEOUT_ENV}={raw!r}: a positive number of seconds")
    return value


@dataclasses.dataclass(frozen=True)
class Group:
    """This process's place in the default process group, and the few collectives training uses."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where tensors for collectives live: NCCL wants them on this rank's GPU."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def device(self, requested: str) -> torch.device:
        """The training device of this rank: --device cuda -> cuda:LOCAL_RANK; cpu stays cpu."""
        dev = torch.device(requested)
        if dev.type != "cuda":
            return dev
        if dev.index is not None and dev.index != self.local_rank:
            raise IMFError(f"--device {requested}: under torchrun every rank uses cuda:LOCAL_RANK; pass --device cuda")
        return torch.device("cuda", self.local_rank)

    # ------------------------------------------------------------------ sharding a global batch

    def shard(self, n: int) -> slice:
        """This rank's part of a global batch of n queries: W contiguous, near-equal shards
        (sizes differ by at most one), rank order, as np.array_split cuts them."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def share(self, weights: np.ndarray, mine: slice) -> float:
        """The factor on this rank's (locally averaged) loss that makes DDP's average of the
        ranks' gradients the gradient of the global batch's loss: W x its shard's weight / the
        global weight. weights: (B,) of the global batch (answers per query, or ones)."""
        total = float(weights.sum())
        return self.world_size * float(weights[mine].sum()) / total

    def batches(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """An epoch's global batches, with a last one smaller than W (possible for W > 2 only:
        batch_order never ends on one query) merged into the one before, so that no rank gets
        an empty shard."""
        if len(batches) > 1 and len(batches[-1]) < self.world_size:
            batches = [*batches[:-2], np.concatenate(batches[-2:])]
        if len(batches[0]) < self.world_size:
            raise IMFError(f"{len(batches[0])} training queries cannot be shared by {self.world_size} processes")
        return batches

    # ------------------------------------------------------------------ collectives

    def barrier(self) -> None:
        dist.barrier()

    def sum_(self, t: Tensor) -> Tensor:
        """All-reduce (sum) in place, returned."""
        dist.all_reduce(t)
        return t

    def decide(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.comm_device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def stop_code(self, ended: str | None) -> str | None:
        """Rank 0's end of the run after an epoch (one of STOP_CODES), on every rank."""
        t = torch.tensor([STOP_CODES.index(ended) if self.main else 0], dtype=torch.int32, device=self.comm_device)
        dist.broadcast(t, src=0)
        return STOP_CODES[int(t.item())]

    def check_same_run(self, what: Mapping[str, Any]) -> None:
        """IMFError on every rank, naming the ranks and the keys, unless every rank passes the
        same `what` (configuration, dataset fingerprint, versions): ranks that disagree would
        train different batches or models and fail later in a collective, or not at all."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, dict(what))
        ref = gathered[0]
        diffs = [
            f"rank {r}: {k} {mine.get(k)!r} (rank 0: {ref.get(k)!r})"
            for r, mine in enumerate(gathered[1:], start=1)
            for k in sorted(set(ref) | set(mine))
            if mine.get(k) != ref.get(k)
        ]
        if diffs:
            raise IMFError("the ranks of this run disagree: " + "; ".join(diffs[:8]) + (" ..." if len(diffs) > 8 else ""))

    def dropout_seed(self, seed: int, epoch: int) -> int:
        """The torch seed of rank r > 0 for an epoch: its own dropout masks, reproducible, and
        the same whether the run was resumed or not."""
        return int(np.random.SeedSequence([seed % 2**63, self.rank, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around `model` (broadcasts rank 0's weights once). Buffers are
        not broadcast at every step: the feature matrices never change, and GlobalBatchNorm1d
        keeps the running statistics equal on every rank."""
        ddp = nn.parallel.DistributedDataParallel
        # torch >= 2.13 names the option forward_sync_buffers (buffers still synced once, at
        # construction); earlier releases broadcast_buffers.
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters else {"broadcast_buffers": False}
        return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def current() -> Group | None:
    """The default process group when one of more than one process is initialised, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Group(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        backend=str(dist.get_backend()),
    )


@contextlib.contextmanager
def session(device: str) -> Iterator[Group | None]:
    """Join the process group torchrun describes (WORLD_SIZE > 1), for the length of the block;
    yields None without torchrun (nothing is initialised). gloo for a CPU run, NCCL for cuda.

    On ranks other than 0 only warnings are logged; every log line names its rank. An exception
    out of the block is logged as "rank R of W failed: ..." before it propagates (the process
    then exits with an error and torchrun stops the other ranks).
    """
    world = launched_world_size()
    if world < 2:
        yield None
        return
    if dist.is_available() and dist.is_initialized():
        yield current()  # the caller's own group
        return
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    try:
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    except Exception as exc:
        log.error("rank %s of %d could not join the process group (%s): %s", os.environ.get("RANK", "?"), world, backend, exc)
        raise
    group = current()
    assert group is not None
    _label_logging(group)
    try:
        yield group
    except Exception as exc:
        log.error("rank %d of %d failed: %s: %s", group.rank, group.world_size, type(exc).__name__, exc)
        raise
    # Every rank leaves together: rank 0 hosts the group's store, and a rank still tearing its
    # group down after rank 0 has exited aborts in gloo ("terminate called without an active
    # exception", seen once in CI).
    dist.barrier()
    dist.destroy_process_group()


def _label_logging(group: Group) -> None:
    """Every log line names its rank; ranks other than 0 log warnings and errors only."""
    root = logging.getLogger()
    for handler in root.handlers:
        fmt = handler.formatter._fmt if handler.formatter is not None else "%(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter((fmt or "%(message)s").replace("%(message)s", f"[rank {group.rank}/{group.world_size}] %(message)s")))
    if not group.main:
        root.setLevel(logging.WARNING)


# ----------------------------------------------------------------------------- BatchNorm over the global batch


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with its gradient: d(sum_r x_r)/d x_r = 1, so the gradient reaching
    each rank's x is the sum over ranks of the gradients of the sum."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # type: ignore[override]
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training-mode statistics are those of the global batch (every rank's
    rows), for CPU (gloo) as well as GPU; evaluation mode is BatchNorm1d's.

    One all-reduce per forward pass (and one for its gradient): each rank's count, sum and sum
    of squares, accumulated in float64 so that the variance E[x^2] - E[x]^2 loses nothing
    measurable to cancellation at the scale of these activations. The running statistics are
    updated as BatchNorm1d updates them (unbiased variance, momentum), so they stay equal on
    every rank."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return super().forward(x)
        x = x.float()
        x64 = x.double()
        d = x.shape[1]
        local = torch.cat([x64.sum(dim=0), (x64 * x64).sum(dim=0), x64.new_full((1,), float(x.shape[0]))])
        total = _SumOverRanks.apply(local)
        n = total[-1].detach()
        mean = total[:d] / n
        var = (total[d:2 * d] / n - mean * mean).clamp(min=0.0)
        if self.track_running_stats:
            with torch.no_grad():
                assert self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach().float(), alpha=factor)
                self.running_var.mul_(1 - factor).add_((var.detach() * (n / (n - 1).clamp(min=1))).float(), alpha=factor)
        out = (x - mean.float()) * torch.rsqrt(var.float() + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out


def _swap_batchnorm(model: nn.Module, to: type[nn.BatchNorm1d]) -> int:
    """Replace every BatchNorm1d (exactly that class or GlobalBatchNorm1d) of `model` by an
    instance of `to` holding the same Parameter and buffer objects; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) not in (nn.BatchNorm1d, GlobalBatchNorm1d) or type(child) is to:
                continue
            new = to(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine, track_running_stats=child.track_running_stats)
            # The same Parameter and buffer objects: the optimizer's and DDP's references stay valid.
            new._parameters = child._parameters
            new._buffers = child._buffers
            new.train(child.training)
            setattr(parent, name, new)
            count += 1
    return count


def use_global_batchnorm(model: nn.Module) -> int:
    """Every BatchNorm1d of `model` -> GlobalBatchNorm1d, in place (before the optimizer and DDP)."""
    return _swap_batchnorm(model, GlobalBatchNorm1d)


def use_local_batchnorm(model: nn.Module) -> int:
    """Back to plain BatchNorm1d (what a bundle's model has), in place."""
    return _swap_batchnorm(model, nn.BatchNorm1d)


__all__ = [
    "DEFAULT_TIMEOUT_S", "STOP_CODES", "TIMEOUT_ENV", "GlobalBatchNorm1d", "Group", "current", "launched_rank", "launched_world_size",
    "session", "timeout_s", "use_global_batchnorm", "use_local_batchnorm",
]
