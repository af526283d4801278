"""Shared fixtures: tiny hand-made datasets, a small slice of the real FB15k-237, one model
trained on that slice per session (saved as a bundle, and a copy with its extras fitted), and a
throwaway redis-server. Helpers that test modules call directly live in tests/helpers.py.

The day-to-day loop leaves out the tests marked slow (the shipped model's full validation
evaluation, the load campaign, real server processes, the browser and the containers):

    .venv/bin/python -m pytest -m "not slow"

The full run, what CI runs, is `bash scripts/test.sh` (every test, slow ones included).
"""

from __future__ import annotations

import os
import tempfile

# FastAPI's TestClient speaks to the app as Host "testserver": the service accepts only the Host
# names in IMF_TRUSTED_HOSTS (a DNS-rebinding guard), so every Settings the tests build accepts
# it too, unless a test sets trusted_hosts itself (tests/test_hardening.py does).
os.environ.setdefault("IMF_TRUSTED_HOSTS", "testserver,localhost,127.0.0.1,::1,[::1]")
# The key that authenticates saved FAISS indexes (service.index) lives under XDG_STATE_HOME:
# the tests, and the servers they start, use a throwaway one, never the tester's own.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="imf-test-state-")

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from model.kg.dataset import load_dataset
from tests.helpers import RedisServer, export_dataset, write_dataset

if TYPE_CHECKING:
    from model.training.loop import TrainResult


@pytest.fixture(scope="session")
def fb15k_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 600 best-connected FB15k-237 entities and the real triples among them (committed data)."""
    ds = load_dataset("fb15k-237")
    degree = np.bincount(ds.train[:, [0, 2]].ravel(), minlength=ds.num_entities)
    top = np.argsort(-degree, kind="stable")[:600]
    return export_dataset(ds, tmp_path_factory.mktemp("fb15k_slice"), top)


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> Path:
    """A 6-entity graph with a text modality covering 4 entities."""
    train = [("a", "likes", "b"), ("b", "likes", "c"), ("c", "likes", "d"), ("d", "likes", "e"), ("e", "knows", "f"), ("a", "knows", "c")]
    valid = [("a", "likes", "c")]
    test = [("b", "knows", "d")]
    feats = {"text": (np.random.default_rng(0).normal(size=(4, 5)).astype(np.float16), ["a", "b", "c", "f"])}
    ents = [(e, f"Entity {e.upper()}", f"the letter {e}") for e in "abcdef"]
    return write_dataset(tmp_path / "tiny", train, valid, test, entities=ents, features=feats)


@pytest.fixture(scope="session")
def slice_training(fb15k_slice: Path) -> TrainResult:
    """The one small IMF trained on the FB15k-237 slice (text + numeric) in a session, in memory
    (model, dataset, metrics). Tests that check training itself train their own; everything
    else that needs a model of the slice uses this one (or slice_bundle), so it is trained once.
    Read-only: a test that changes the model or the dataset works on a copy."""
    from model.network.imf import IMFConfig
    from model.training.config import TrainConfig
    from model.training.loop import train

    ds = load_dataset(fb15k_slice)
    return train(TrainConfig(dataset=str(fb15k_slice), epochs=6, lr=0.01, seed=0, patience=100), ds, progress=False, model_config=IMFConfig(dim=32, relation_dim=32))


@pytest.fixture(scope="session")
def slice_bundle(slice_training: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """slice_training saved as a bundle, without extras (no calibration, no feature map)."""
    from model.bundle.format import save_bundle

    ds = slice_training.dataset
    out = tmp_path_factory.mktemp("bundles") / "slice"
    return save_bundle(out, slice_training.model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={"epochs": 6}, metrics={"valid": slice_training.valid_metrics})


@pytest.fixture(scope="session")
def extras_bundle(slice_bundle: Path, fb15k_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """slice_bundle with its extras fitted (calibration + new-entity feature map), for the tests
    of new entities, probabilities and the container; the others use slice_bundle and skip this fit."""
    import shutil

    from model.pipeline import fit_extras

    out = tmp_path_factory.mktemp("extras") / "slice"
    shutil.copytree(slice_bundle, out)
    summary = fit_extras(out, dataset=fb15k_slice)
    assert summary["calibration"]["method"] in ("identity", "platt", "platt-family", "isotonic-family")
    return out


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own on a free loopback port (skipped where the binary is
    missing, a failure under CI), stopped afterwards. Durable (an append-only file in tmp_path):
    the service refuses a Redis that may lose entities as its entity store, and
    tests/test_new_entities.py uses this one as the store of two replicas."""
    server = RedisServer(tmp_path, durable=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
