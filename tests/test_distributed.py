"""Data-parallel training (model.training.distributed): 2 gloo processes with global batch B reach
the parameters of 1 process with batch B; rank 0 decides when the run ends and every rank stops
with it; `torchrun -m model train` end to end, resumed on one process; a failing rank is named
and ends the run.

The processes are real: torch.multiprocessing.spawn for the loop itself, torchrun for the
command line. Nothing here depends on the machine's speed: the time budget is driven by a fake
clock, early stopping by a fake validation score, and the timeouts only guard against a hang.

Run as a module (`torchrun ... -m tests.test_distributed train ...`) it is `imf train` with a
failure injected on rank 1 (the failure test).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.kg.dataset import load_dataset
from model.network.imf import IMFConfig
from model.training.checkpoint import load_checkpoint
from model.training.config import TrainConfig
from model.training.distributed import Group
from tests.helpers import export_dataset, free_port

REPO = Path(__file__).resolve().parent.parent
# Dropout off: with it, each rank draws its own masks (docs/training.md) and no two runs of
# different world sizes can agree. BatchNorm over the global batch is what makes the rest agree.
MODEL = IMFConfig(dim=16, relation_dim=8, input_dropout=0.0, hidden_dropout1=0.0, hidden_dropout2=0.0)
PROCESS_TIMEOUT_S = 240  # guards against a hang only; a run takes seconds
COLLECTIVE_TIMEOUT_S = 180  # a rank waiting longer for another fails instead of hanging the suite


@pytest.fixture(scope="module")
def small_slice(fb15k_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 100 best-connected entities of the FB15k-237 slice (text + numeric features): 746
    training queries."""
    ds = load_dataset(fb15k_slice)
    degree = np.bincount(ds.train[:, [0, 2]].ravel(), minlength=ds.num_entities)
    return export_dataset(ds, tmp_path_factory.mktemp("small_slice"), np.argsort(-degree, kind="stable")[:100])


def _cfg(dataset: Path, **kw: Any) -> TrainConfig:
    # Batches of 37: shards of 19 and 18 queries, answers per shard uneven too (per-answer loss);
    # the contrastive loss on (every rank adds the same term).
    base = {"dataset": str(dataset), "epochs": 2, "batch_size": 37, "lr": 0.01, "seed": 5, "patience": 100,
            "contrastive_weight": 0.1, "contrastive_size": 32, "valid_subset": None}
    return TrainConfig(**{**base, **kw})


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """The same tensors to float rounding: each within 1e-4 of `want` in relative norm, and 99.9%
    of all entries within 1e-5. Not every entry: Adam divides each gradient entry by its own
    running RMS, so where an entry's gradients stay near 1e-6 the rounding of a sum over 2
    processes rather than 1 becomes a visible difference in its steps (up to lr; seen: 1 of
    89,612 entries off by 4e-5 after 42 steps, the worst tensor by 3e-6 in relative norm).
    Per-rank BatchNorm statistics or an unscaled per-rank loss miss the norm bound by 2 to 3
    orders of magnitude (seen: 0.1 and 0.05 for the decision-fusion weights alpha)."""
    assert got.keys() == want.keys()
    close = total = 0
    for k, v in want.items():
        g = got[k]
        if not v.is_floating_point():
            assert torch.equal(g, v), k  # num_batches_tracked: every step counted once
            continue
        assert float((g - v).norm()) <= 1e-4 * float(v.norm()) + 1e-6, (k, float((g - v).norm()), float(v.norm()))
        close += int(((g - v).abs() <= 1e-5 + 1e-5 * v.abs()).sum())
        total += v.numel()
    assert close >= 0.999 * total, (close, total)


# ----------------------------------------------------------------------------- spawned ranks


def _rank_main(rank: int, world: int, port: int, job: Callable[[int, Path], None], out: Path, timeout_s: float) -> None:
    """One rank, as torchrun would start it: the environment, then the process group."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "IMF_DIST_TIMEOUT_S": str(timeout_s)})
    torch.set_num_threads(1)
    from model.training.distributed import session

    with session("cpu") as group:
        assert group is not None and group.rank == rank
        job(rank, out)


def _spawn(job: Callable[[int, Path], None], out: Path, world: int = 2, timeout_s: float = COLLECTIVE_TIMEOUT_S) -> None:
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank_main, args=(world, free_port(), job, out, timeout_s), nprocs=world, join=True)


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """train(cfg) on every rank with run_dir out/run (rank 0 writes it); each rank saves what
    it returned to out/rank{r}.pt. patch: 'clock' (rank 0's clock runs a minute per reading:
    the time budget) or 'score' (rank 0's validation MRR falls every epoch: early stopping)."""

    cfg: TrainConfig
    patch: str | None = None

    def __call__(self, rank: int, out: Path) -> None:
        from model.training import loop

        if rank == 0 and self.patch == "clock":
            loop.time = _FakeClock()  # type: ignore[attr-defined]
        if rank == 0 and self.patch == "score":
            loop.evaluate = _falling_scores()  # type: ignore[attr-defined]
        result = loop.train(self.cfg, model_config=MODEL, progress=False, run_dir=out / "run")
        torch.save({
            "model": result.model.state_dict(), "stopped_by": result.stopped_by, "epochs_run": result.epochs_run,
            "history": result.history, "batchnorm": sorted({type(m).__name__ for m in result.model.modules() if "BatchNorm" in type(m).__name__}),
        }, out / f"rank{rank}.pt")


@dataclasses.dataclass(frozen=True)
class ResumeJob:
    """On every rank: train(cfg) for `first` epochs into out/part, then resume it to cfg.epochs;
    and the whole run uninterrupted into out/whole."""

    cfg: TrainConfig
    first: int

    def __call__(self, rank: int, out: Path) -> None:
        from model.training.loop import train

        model = dataclasses.replace(MODEL, input_dropout=0.2, hidden_dropout1=0.2, hidden_dropout2=0.3)
        train(self.cfg, model_config=model, progress=False, run_dir=out / "whole")
        train(dataclasses.replace(self.cfg, epochs=self.first), model_config=model, progress=False, run_dir=out / "part")
        train(self.cfg, progress=False, run_dir=out / "part", resume=True)


def _absent_rank_zero(rank: int, out: Path) -> None:
    """Rank 0 never comes to the collective; rank 1 waits for it in a barrier."""
    import time

    import torch.distributed as dist

    if rank == 0:
        time.sleep(PROCESS_TIMEOUT_S)
    dist.barrier()


class _FakeClock:
    """time for model.training.loop: monotonic() advances a minute per reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 60.0
        return self.now


def _falling_scores() -> Callable[..., dict]:
    scores = iter(np.linspace(0.5, 0.1, 50))

    def evaluate(*args: Any, **kwargs: Any) -> dict:
        return {"mrr": float(next(scores)), "hits@10": 0.5}

    return evaluate


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n", [2, 3, 5, 36, 37, 38])
def test_shards_cover_a_batch_and_their_shares_add_up(world: int, n: int) -> None:
    weights = np.random.default_rng(n).integers(1, 9, size=n).astype(float)
    groups = [Group(rank=r, world_size=world, local_rank=r, backend="gloo") for r in range(world)]
    if n < world:
        with pytest.raises(Exception, match="cannot be shared"):
            groups[0].batches([np.arange(n)])
        return
    shards = [g.shard(n) for g in groups]
    assert np.array_equal(np.concatenate([np.arange(n)[s] for s in shards]), np.arange(n))
    assert max(s.stop - s.start for s in shards) - min(s.stop - s.start for s in shards) <= 1
    # DDP averages the ranks' gradients: the shares average to 1, each its weight's fraction.
    shares = [g.share(weights, s) for g, s in zip(groups, shards, strict=True)]
    assert sum(shares) / world == pytest.approx(1.0)
    assert shares[0] == pytest.approx(world * weights[shards[0]].sum() / weights.sum())


def test_a_last_batch_smaller_than_the_world_joins_the_one_before() -> None:
    g = Group(rank=0, world_size=3, local_rank=0, backend="gloo")
    batches = [np.arange(0, 4), np.arange(4, 6)]
    assert [len(b) for b in g.batches(batches)] == [6]
    assert [len(b) for b in g.batches([np.arange(4), np.arange(4, 7)])] == [4, 3]


def test_two_processes_reach_the_parameters_of_one_with_the_same_global_batch(small_slice: Path, tmp_path: Path) -> None:
    """The parity the design rests on: 42 Adam steps (2 epochs of 746 queries: 20 batches of 37,
    shards of 19 and 18, and one of 6) with the per-answer loss and the contrastive loss, on 2
    gloo processes and on 1, from the same seed, end at the same weights and Adam moments to
    float rounding."""
    from model.training.loop import build_model, train

    cfg = _cfg(small_slice)
    one = train(cfg, model_config=MODEL, progress=False, run_dir=tmp_path / "one")
    _spawn(TrainJob(cfg), tmp_path / "two")

    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two" / "run")
    assert b["world_size"] == 2 and "world_size" not in a  # a single process's checkpoint is unchanged
    torch.manual_seed(cfg.seed)  # as train() draws the initial weights
    init = build_model(one.dataset, cfg.modalities, dataclasses.replace(MODEL, output=cfg.output)).state_dict()
    assert_same_weights(b["model"], a["model"])
    # The weights did move, by far more than they differ: not the agreement of two idle runs.
    assert min(float((v - init[k]).norm() / v.norm()) for k, v in a["model"].items() if k.endswith(".core")) > 0.05
    for i, state in a["optimizer"]["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            assert_same_weights({k: b["optimizer"]["state"][i][k]}, {k: state[k]})
    # The epoch losses (summed over the ranks) and the validation of rank 0 agree too.
    for h1, h2 in zip(a["history"], b["history"], strict=True):
        assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-5)
        assert h2["queries"] == h1["queries"] == 746
        assert h2["valid_mrr"] == pytest.approx(h1["valid_mrr"], abs=1e-3)
    # Both ranks end with the same weights (DDP), and a plain BatchNorm1d model again.
    r0, r1 = torch.load(tmp_path / "two" / "rank0.pt"), torch.load(tmp_path / "two" / "rank1.pt")
    assert r0["batchnorm"] == r1["batchnorm"] == ["BatchNorm1d"]
    last = b["model"]
    assert all(torch.equal(r1["model"][k], last[k]) for k in last)
    assert one.epochs_run == r0["epochs_run"] == r1["epochs_run"] == 2


@pytest.mark.parametrize("patch, stopped_by", [("clock", "time budget"), ("score", "early stopping")])
def test_rank_zero_decides_the_end_and_every_rank_stops_with_it(small_slice: Path, tmp_path: Path, patch: str, stopped_by: str) -> None:
    """Rank 0's clock (a minute per reading, against a 5-minute budget) or its validation score
    (falling every epoch, patience 2) ends the run; rank 1's own clock and (absent) scores never
    would. Both stop after the same step, with the same weights."""
    cfg = _cfg(small_slice, epochs=6, patience=2, max_minutes=5.0 if patch == "clock" else None, contrastive_weight=0.0)
    _spawn(TrainJob(cfg, patch=patch), tmp_path)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["stopped_by"] == stopped_by
    assert r1["epochs_run"] == r0["epochs_run"] < 6
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["epoch"] == r0["epochs_run"] and ckpt["stopped_by"] == stopped_by
    # Rank 1 returns its last weights: those of rank 0's last checkpoint, bit for bit.
    assert all(torch.equal(r1["model"][k], v) for k, v in ckpt["model"].items())
    if patch == "clock":  # stopped inside the first epoch, at the same step on both ranks
        assert r0["history"][0]["queries"] == r1["history"][0]["queries"] < 746


def test_a_data_parallel_run_resumes_exactly_on_the_same_number_of_processes(small_slice: Path, tmp_path: Path) -> None:
    """With dropout on (rank 1 re-seeds its masks every epoch from the seed, its rank and the
    epoch; rank 0's generator is in the checkpoint), 2 processes stopped after epoch 2 and
    resumed end where 2 processes that never stopped end, bit for bit."""
    _spawn(ResumeJob(_cfg(small_slice, epochs=3), first=2), tmp_path)
    whole, part = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "part")
    assert part["epoch"] == whole["epoch"] == 3 and part["world_size"] == 2
    assert all(torch.equal(part["model"][k], v) for k, v in whole["model"].items())
    assert [h["loss"] for h in part["history"]] == [h["loss"] for h in whole["history"]]
    assert [h["valid_mrr"] for h in part["history"]] == [h["valid_mrr"] for h in whole["history"]]


def test_a_rank_waiting_for_a_peer_that_never_comes_gives_up(tmp_path: Path) -> None:
    """The process group's timeout (IMF_DIST_TIMEOUT_S, here 3 s) ends a rank stuck in a
    collective whose peer never arrives, with an error, instead of a hang."""
    import torch.multiprocessing as mp

    with pytest.raises(mp.ProcessRaisedException, match="(?i)timed? ?out"):
        _spawn(_absent_rank_zero, tmp_path, timeout_s=3)


def _torchrun(args: list[str], *, module: str = "model", timeout: float = PROCESS_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "IMF_DIST_TIMEOUT_S": str(COLLECTIVE_TIMEOUT_S)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_torchrun_trains_a_bundle_that_resumes_on_one_process(small_slice: Path, tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 2 -m model train` end to end: rank 0 alone logs and writes the
    bundle and the run directory; the run then goes on with one process (`imf train --resume`)
    and ends where a single process that ran all three epochs ends, to float rounding."""
    from model.bundle.format import read_manifest
    from model.cli import main as cli_main

    out = tmp_path / "two"
    opts = ["--epochs", "2", "--batch-size", "37", "--lr", "0.01", "--seed", "5", "--valid-subset", "0", "--dim", "16", "--relation-dim", "8",
            "--input-dropout", "0", "--hidden-dropout1", "0", "--hidden-dropout2", "0", "--no-sizing"]
    res = _torchrun(["train", "--dataset", str(small_slice), "--out", str(out), *opts, "--no-extras", "--quiet"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "bundle: " in res.stdout and res.stdout.count("bundle: ") == 1  # rank 0's summary only
    assert "[rank 0/2] epoch 2: loss" in res.stderr
    assert "[rank 1/2]" not in res.stderr  # the other rank is quiet
    manifest = read_manifest(out)
    assert manifest["training"]["epochs_run"] == 2 and len(manifest["training"]["history"]) == 2
    assert load_checkpoint(Path(f"{out}.run"))["world_size"] == 2

    assert cli_main(["train", "--resume", f"{out}.run", "--epochs", "3", "--quiet"]) == 0
    resumed = load_checkpoint(Path(f"{out}.run"))
    assert resumed["epoch"] == 3 and "world_size" not in resumed  # written by one process
    assert cli_main(["train", "--dataset", str(small_slice), "--out", str(tmp_path / "one"), *opts, "--epochs", "3", "--no-extras", "--quiet"]) == 0
    whole = load_checkpoint(tmp_path / "one.run")
    assert_same_weights(resumed["model"], whole["model"])
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in whole["history"]], rel=1e-5)
    assert json.loads(json.dumps(read_manifest(out)["training"]["stopped_by"])) == "epochs"


@pytest.mark.slow
def test_a_failing_rank_is_named_and_ends_every_rank(small_slice: Path, tmp_path: Path) -> None:
    """Rank 1 fails in its 3rd step (this module run under torchrun injects it): its error is
    logged with its rank, torchrun stops rank 0 (waiting in a collective), and nothing is written."""
    out = tmp_path / "failed"
    res = _torchrun(["train", "--dataset", str(small_slice), "--out", str(out), "--epochs", "2", "--dim", "8", "--relation-dim", "4",
                     "--no-extras", "--quiet"], module="tests.test_distributed")
    assert res.returncode != 0
    assert "rank 1 of 2 failed: RuntimeError: injected failure in step 3" in res.stderr, res.stderr[-3000:]
    assert not out.exists()


def _fail_on_rank_one() -> None:
    """`imf train`, with a RuntimeError on rank 1 in its 3rd training step."""
    from model.cli import main
    from model.training import loop

    if os.environ.get("RANK") == "1":
        real, calls = loop.training_loss, [0]

        def failing(*args: Any, **kwargs: Any):
            calls[0] += 1
            if calls[0] == 3:
                raise RuntimeError("injected failure in step 3")
            return real(*args, **kwargs)

        loop.training_loss = failing  # type: ignore[assignment]
    raise SystemExit(main(sys.argv[1:]))


if __name__ == "__main__":
    _fail_on_rank_one()
