"""End to end on real data: `imf train` a few epochs on a slice of FB15k-237 (real triples, real
text and numeric features), beat a random ranker by a wide margin on the test split, round-trip
the bundle with identical scores, and run `imf evaluate` / `imf predict`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.bundle.format import load_bundle, save_bundle
from model.cli import main as cli_main
from model.kg.dataset import load_dataset
from model.evaluation.ranking import evaluate
from model.network.imf import expected_random_mrr
from model.network.imf import IMFConfig
from model.training.config import TrainConfig
from model.training.loop import TrainResult, train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir(fb15k_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`imf train` on the slice, as a user runs it. --no-extras: no test here looks at the
    calibration or the feature map (tests/test_new_entities.py and test_calibration.py do)."""
    out = tmp_path_factory.mktemp("e2e") / "run"
    code = cli_main(["train", "--dataset", str(fb15k_slice), "--out", str(out), "--epochs", "12", "--dim", "32", "--lr", "0.01", "--patience", "20", "--no-extras", "--quiet"])
    assert code == 0
    return out


def test_trained_model_beats_random_by_a_wide_margin(run_dir: Path, capsys) -> None:
    capsys.readouterr()
    assert cli_main(["evaluate", str(run_dir), "--split", "test", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("split", "mrr", "mr", "hits@1", "hits@3", "hits@10", "per_direction", "per_branch"):
        assert key in report
    assert report["split"] == "test"
    assert set(report["per_direction"]) == {"head", "tail"}
    assert set(report["per_branch"]) == {"structure", "text", "numeric", "multimodal"}
    n = load_bundle(run_dir).model.cfg.num_entities
    random_mrr = expected_random_mrr(n)
    assert report["mrr"] > 8 * random_mrr, (report["mrr"], random_mrr)
    assert report["hits@10"] > 0.15  # a random ranker gets 10 / n (about 0.02)
    assert report["mr"] < 0.25 * n  # a random ranker averages n / 2


def test_training_never_reads_the_test_split(fb15k_slice: Path) -> None:
    # Two runs, same seed, on datasets whose test splits differ: the second's also holds 2,000
    # training triples. Filtering uses the union of the splits, which those duplicates leave
    # unchanged, so anything that reads the test split for more than filtering (a test metric
    # in model selection, say) sees a different split, while honest training cannot tell.
    import dataclasses

    ds = load_dataset(fb15k_slice)
    other = dataclasses.replace(ds, test=np.concatenate([ds.test, ds.train[:2000]]))
    cfg = TrainConfig(dataset=str(fb15k_slice), epochs=3, lr=0.01, seed=3, patience=100)
    ra = train(cfg, ds, progress=False, model_config=IMFConfig(dim=16, relation_dim=16))
    rb = train(cfg, other, progress=False, model_config=IMFConfig(dim=16, relation_dim=16))
    assert [h["loss"] for h in ra.history] == [h["loss"] for h in rb.history]
    assert [h["valid_mrr"] for h in ra.history] == [h["valid_mrr"] for h in rb.history]
    assert ra.best_epoch == rb.best_epoch and ra.valid_metrics["mrr"] == rb.valid_metrics["mrr"]
    from model.kg.triples import AnswerIndex

    idx = AnswerIndex(ds.all_triples(), ds.num_entities, ds.num_relations)
    # the two test splits really differ to a reader: their MRR is not the same
    assert evaluate(ra.model, ds.test, idx, split="test")["mrr"] != evaluate(ra.model, other.test, idx, split="test")["mrr"]


def test_manifest_records_selection_on_valid_only(run_dir: Path) -> None:
    m = json.loads((run_dir / "manifest.json").read_text())
    assert set(m["metrics"]) == {"valid"}  # no test metric is recorded: selection used valid only
    assert m["training"]["best_epoch"] >= 1 and len(m["training"]["history"]) == m["training"]["epochs_run"]
    assert m["dataset"]["fingerprint"] == load_dataset(m["training"]["dataset"]).fingerprint


def test_bundle_round_trip_gives_identical_scores_and_metrics(slice_training: TrainResult, tmp_path: Path) -> None:
    result = slice_training  # the session's model of the slice: the round trip needs one in memory, not its own training
    ds = result.dataset
    before = evaluate(result.model, ds.test, load_bundle(save_bundle(tmp_path / "b", result.model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={}, metrics={})).known, split="test")
    loaded = load_bundle(tmp_path / "b")
    after = evaluate(loaded.model, loaded.triples["test"], loaded.known, split="test")
    assert before == after
    heads = torch.arange(ds.num_entities)
    rels = torch.from_numpy(np.arange(ds.num_entities) % (2 * ds.num_relations))
    with torch.no_grad():
        _, _, p1 = result.model.eval().score_candidates(heads, rels)
        _, _, p2 = loaded.model.score_candidates(heads, rels)
    assert torch.equal(p1, p2)


def test_cli_predict_prints_ranked_names(run_dir: Path, capsys) -> None:
    b = load_bundle(run_dir)
    h, r, _ = b.triples["train"][0].tolist()
    capsys.readouterr()
    assert cli_main(["predict", str(run_dir), "--head", b.vocab.entity_names[h], "--relation", b.vocab.relation_ids[r], "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"({b.vocab.entity_names[h]} ({b.vocab.entity_ids[h]}), {b.vocab.relation_ids[r]}, ?)")  # the id beside the name
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    assert cli_main(["predict", str(run_dir), "--head", b.vocab.entity_ids[h], "--relation", b.vocab.relation_ids[r], "-k", "3", "--direction", "head", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["predictions"]) == 3 and payload["model"] == b.fingerprint
    assert cli_main(["predict", str(run_dir), "--head", "No Such Entity", "--relation", b.vocab.relation_ids[r]]) == 2
    assert "unknown entity" in capsys.readouterr().err


def test_console_script_runs(run_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "service.cli", "evaluate", str(run_dir), "--split", "valid", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "fused (IMF)" in out.stdout and "branch structure" in out.stdout
