"""What the test modules and bench/ share: a free loopback port, the wait for a server's /ready,
a throwaway redis-server, a validated copy of the service settings, and dataset directories
written in the project format.

One home, so that each of these exists once: test modules import them from here (never from one
another, nor from conftest.py, which holds only fixtures), and so do bench/campaign.py and
bench/serve_bench.py. pytest is imported only inside what needs it, so that the benchmarks can
import this module where pytest is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx
import numpy as np

if TYPE_CHECKING:
    import redis
    from pydantic import BaseModel

    from model.kg.dataset import KGDataset

SettingsT = TypeVar("SettingsT", bound="BaseModel")  # service.settings.Settings, a pydantic model


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (the OS picks it), for a server to listen on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ReadyClient(Protocol):
    """Anything whose `get(path)` asks the app: a FastAPI TestClient, an httpx.Client with a base URL."""

    def get(self, url: str) -> Any: ...


def wait_ready(
    target: str | _ReadyClient,
    timeout: float = 120.0,
    *,
    proc: subprocess.Popen | None = None,
    output: Callable[[], str] | None = None,
    until: Callable[[dict], bool] | None = None,
    interval: float = 0.05,
) -> dict:
    """Poll GET /ready until it answers 200 (and `until(body)` holds, when given); returns the body.

    The one readiness poll of the tests and benchmarks, for every kind of server:

    target: the base URL of a real server (a process, a container), polled over HTTP, where a
        refused or reset connection while it starts is retried; or a client already speaking to
        the app (a FastAPI TestClient inside its `with` block, whose lifespan loads the model in
        the background, so the app answers 503 until it is ready).
    proc: the server's process; its exit ends the wait at once instead of at the timeout.
    output: what the server printed (its log), quoted in the error; by default the process's
        stdout pipe, once it has exited.
    until: a further condition on the 200 body, e.g. that the Redis cache is reachable.

    Raises RuntimeError, with the last answer and the server's output, when the process exits
    first or nothing is ready within `timeout` seconds.
    """

    def printed() -> str:
        if output is not None:
            return output()
        if proc is not None and proc.stdout is not None and proc.poll() is not None:
            return proc.stdout.read()
        return ""

    client = httpx.Client(base_url=target, timeout=5) if isinstance(target, str) else target
    deadline = time.monotonic() + timeout
    last = "no answer"
    try:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{printed()}")
            try:
                res = client.get("/ready")
                last = f"{res.status_code} {res.text[:300]}"
                if res.status_code == 200:
                    body = res.json()
                    if until is None or until(body):
                        return body
            except httpx.TransportError as exc:  # not listening yet
                last = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {timeout:.0f} s; last answer: {last}\n{printed()[-3000:]}")
            time.sleep(interval)
    finally:
        if isinstance(target, str):
            client.close()  # type: ignore[union-attr]


# redis-server options: a cache (nothing persisted), and a store as the service requires of the
# Redis that keeps added entities (every write appended and fsynced, nothing evicted).
CACHE_OPTIONS = ["--save", "", "--appendonly", "no"]
STORE_OPTIONS = ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction"]


class RedisProcess:
    """redis-server on a free loopback port; kill() and start() at will (the port and the
    options stay the same, so clients reconnect, and a durable server replays its file)."""

    def __init__(self, workdir: Path, port: int | None = None, *, durable: bool = False, options: list[str] | None = None) -> None:
        """durable: STORE_OPTIONS (an append-only file in `workdir`), else CACHE_OPTIONS;
        options: any other redis-server options instead (e.g. an eviction policy)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not installed (apt-get install redis-server)")
        self.binary, self.workdir, self.port = binary, workdir, port or free_port()
        self.proc: subprocess.Popen | None = None
        self.options = options if options is not None else (STORE_OPTIONS if durable else CACHE_OPTIONS)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait (up to 30 s: a durable one replays its file first) until it
        answers PONG."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir), *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server {' '.join(self.options)} exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class RedisServer(RedisProcess):
    """RedisProcess for the tests: skipped when the redis-server binary is missing, and a
    failure instead under CI (.ci/run and scripts/test.sh install it)."""

    def __init__(self, workdir: Path, *, durable: bool = False, options: list[str] | None = None) -> None:
        if shutil.which("redis-server") is None:
            import pytest

            message = "redis-server not installed (apt-get install redis-server; .ci/run installs it)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        super().__init__(workdir, durable=durable, options=options)

    def stop(self) -> None:
        self.kill()

    def client(self) -> redis.Redis:
        """A synchronous client of this server, for looking at what the service stored."""
        import redis

        return redis.Redis(port=self.port, socket_timeout=1)


# ----------------------------------------------------------------------------- settings


def with_(settings: SettingsT, **changes: Any) -> SettingsT:
    """A copy of `settings` with `changes`, validated again (model_copy(update=...) would skip
    validation)."""
    return type(settings)(**{**settings.model_dump(), **changes})


# ----------------------------------------------------------------------------- datasets


def write_dataset(
    root: Path,
    train: list[tuple[str, str, str]],
    valid: list[tuple[str, str, str]],
    test: list[tuple[str, str, str]],
    *,
    entities: list[tuple[str, str, str]] | None = None,
    features: dict[str, tuple[np.ndarray, list[str]]] | None = None,
) -> Path:
    """A dataset directory in the project format (see model/kg/dataset.py)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        (root / f"{name}.tsv").write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    if entities is not None:
        (root / "entities.tsv").write_text("".join("\t".join(r) + "\n" for r in entities), encoding="utf-8")
    if features:
        (root / "features").mkdir(exist_ok=True)
        for mod, (matrix, ids) in features.items():
            np.save(root / "features" / f"{mod}.npy", matrix)
            (root / "features" / f"{mod}.ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return root


def export_dataset(ds: KGDataset, root: Path, entities: np.ndarray) -> Path:
    """Write the sub-graph of `ds` induced by `entities` (indices) to `root`, with features."""
    keep = np.zeros(ds.num_entities, dtype=bool)
    keep[entities] = True

    def rows(split: np.ndarray) -> list[tuple[str, str, str]]:
        mask = keep[split[:, 0]] & keep[split[:, 2]]
        return [(ds.entity_ids[h], ds.relation_ids[r], ds.entity_ids[t]) for h, r, t in split[mask].tolist()]

    train = rows(ds.train)
    in_train = {h for h, _, _ in train} | {t for _, _, t in train}
    rels = {r for _, r, _ in train}
    valid = [x for x in rows(ds.valid) if x[0] in in_train and x[2] in in_train and x[1] in rels]
    test = [x for x in rows(ds.test) if x[0] in in_train and x[2] in in_train and x[1] in rels]
    order = [i for i in range(ds.num_entities) if keep[i] and ds.entity_ids[i] in in_train]
    feats = {}
    for mod, f in ds.features.items():
        ids = [i for i in order if f.present[i]]
        if not ids:
            continue
        feats[mod] = (f.matrix[ids].astype(np.float16), [ds.entity_ids[i] for i in ids])
    write_dataset(
        root, train, valid, test,
        entities=[(ds.entity_ids[i], ds.entity_names[i], ds.entity_descriptions[i]) for i in order],
        features=feats,
    )
    return root
