"""Deployment hardening: what the HTTP server bounds (connections, request-head time and size),
what the compose stack publishes and puts in front of the API (a reverse proxy with timeouts),
and that a saved FAISS index is only read when this installation wrote it.

The compose and proxy checks read the files as text (no container engine needed);
tests/test_container.py brings the stack up for real. The server checks start the real server
process (`python -m service BUNDLE`), because the bounds live in uvicorn, below the app.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest
import yaml

from bench.campaign import ServerProcess
from service.index import CandidateIndex

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
NGINX = REPO / "deploy" / "nginx.conf"


# ----------------------------------------------------------------------------- compose


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _default(value: str) -> str:
    """A compose value with every ${NAME:-default} replaced by its default (what an empty
    environment gets)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_publishes_only_on_loopback_by_default() -> None:
    """Published ports bind 127.0.0.1 unless the operator sets IMF_BIND: a fresh `compose up`
    must not expose the API (keyless by default) on every interface."""
    published = {name: svc.get("ports", []) for name, svc in _compose()["services"].items() if svc.get("ports")}
    assert published, "the stack publishes nothing?"
    for name, ports in published.items():
        for port in ports:
            text = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}:{port.get('target')}"
            parts = _default(str(text)).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name} publishes {text!r}: not bound to 127.0.0.1 by default"
            assert "${IMF_BIND" in str(text), f"{name}: the bind address should come from IMF_BIND"


def test_compose_puts_a_reverse_proxy_with_timeouts_in_front() -> None:
    """The API is reached through nginx (deploy/nginx.conf), which times out slow and idle
    clients and caps connections; the API itself is not published; both raise nofile."""
    services = _compose()["services"]
    assert "ports" not in services["api"], "the API must be reached through the proxy only"
    proxy = services["proxy"]
    assert _default(proxy["image"]) == "nginx:1-alpine"
    assert any("deploy/nginx.conf" in v and v.endswith(":ro") for v in proxy["volumes"]), proxy["volumes"]
    assert "api" in proxy["depends_on"]
    for name in ("api", "proxy"):
        nofile = services[name]["ulimits"]["nofile"]
        # IMF_MAX_CONNECTIONS' default (1024) and nginx's worker_connections fit many times over
        assert min(nofile["soft"], nofile["hard"]) >= 16384, f"{name}: nofile {nofile}"

    conf = NGINX.read_text(encoding="utf-8")
    directives = {m.group(1): m.group(2) for m in re.finditer(r"^\s*([a-z_]+)\s+([^;]*);", conf, flags=re.M)}
    for name in ("client_header_timeout", "client_body_timeout", "keepalive_timeout", "send_timeout", "limit_conn", "limit_conn_zone", "client_max_body_size"):
        assert name in directives, f"deploy/nginx.conf has no {name}"
    assert int(directives["client_header_timeout"].rstrip("s")) <= 15
    assert re.search(r"proxy_pass\s+http://imf_api\s*;", conf) and re.search(r"server\s+api:8000\b", conf)


def test_every_base_image_can_be_pinned_by_digest() -> None:
    """The base images come from variables (Dockerfile ARG, compose ${IMF_*_IMAGE}) whose
    defaults are the documented floating tags, so a deployment pins them by digest in one place
    (.env) and the local stand-in images still build."""
    froms = re.findall(r"^FROM\s+(\S+)", (REPO / "Dockerfile").read_text(encoding="utf-8"), flags=re.M)
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms), froms
    services = _compose()["services"]
    assert services["api"]["build"]["args"]["PYTHON_IMAGE"] == "${IMF_PYTHON_IMAGE:-python:3.11-slim}"
    for name, var in (("redis", "IMF_REDIS_IMAGE"), ("store", "IMF_REDIS_IMAGE"), ("proxy", "IMF_NGINX_IMAGE")):
        assert services[name]["image"].startswith("${" + var + ":-"), services[name]["image"]
    docs = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert "imagetools inspect" in docs and "RepoDigests" in docs


# ----------------------------------------------------------------------------- imf serve


def test_serve_bounds_connections_and_request_heads(slice_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`imf serve` hands uvicorn the connection limit (IMF_MAX_CONNECTIONS) and its bounded HTTP
    protocol (request-head deadline and size), not uvicorn's unbounded defaults."""
    from service import cli

    seen: dict = {}
    monkeypatch.setattr(cli.uvicorn, "run", lambda app, **kw: seen.update(kw))
    monkeypatch.setattr(cli, "_raise_nofile", lambda needed: None, raising=False)  # not this process's limit
    monkeypatch.setenv("IMF_MAX_CONNECTIONS", "77")
    monkeypatch.setenv("IMF_KEEPALIVE_S", "7")
    assert cli.main(["serve", str(slice_bundle)]) == 0
    assert seen["limit_concurrency"] == 77
    assert seen["timeout_keep_alive"] == 7
    assert seen["h11_max_incomplete_event_size"] == cli.MAX_HEAD_BYTES
    protocol = seen["http"]
    assert isinstance(protocol, type) and protocol.__name__ == "BoundedHttpToolsProtocol"


@pytest.fixture(scope="module")
def bounded_server(slice_bundle: Path) -> Iterator[tuple[str, int]]:
    """The real server with small bounds: 1 s for a request head or an idle connection, and at
    most 8 connections."""
    server = ServerProcess(slice_bundle, {"IMF_SAVE_INDEX": "false", "IMF_KEEPALIVE_S": "1", "IMF_MAX_CONNECTIONS": "8", "IMF_REDIS_URL": ""})
    server.start()
    try:
        yield server.base, server.port
    finally:
        server.stop()


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes | None = None) -> bool:
    """Whether the server closes `sock` within `seconds`, sending `trickle` every 0.2 s if given
    (a slow client dribbling its request head)."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if trickle is not None:
                sock.sendall(trickle)
            data = sock.recv(4096)
            if data == b"" or data.startswith(b"HTTP/1.1 4"):
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


@pytest.mark.slow
def test_idle_and_slow_header_connections_are_closed(bounded_server: tuple[str, int]) -> None:
    """uvicorn's own keep-alive timer starts only after a first response, and any byte cancels
    it: a connection that never sends a request, or dribbles one header line at a time, stayed
    open for ever. The bounded protocol closes both once IMF_KEEPALIVE_S (1 s here) passes
    without a complete request head."""
    _, port = bounded_server
    with socket.create_connection(("127.0.0.1", port)) as idle:
        assert _closed_within(idle, 4), "a connection that sent nothing stayed open"
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        assert _closed_within(slow, 4, trickle=b"X-Slow: 1\r\n"), "a connection dribbling headers stayed open"
    # a normal client is unaffected
    with httpx.Client(base_url=bounded_server[0], timeout=5) as http:
        assert http.get("/health").status_code == 200


@pytest.mark.slow
def test_oversized_request_head_is_refused(bounded_server: tuple[str, int]) -> None:
    """httptools buffers a header of any length; the bounded protocol answers 431 and closes once
    a request head passes MAX_HEAD_BYTES."""
    from service.cli import MAX_HEAD_BYTES

    _, port = bounded_server
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        answer = b""
        try:
            for _ in range(2 * MAX_HEAD_BYTES // 4096 + 4):
                s.sendall(b"a" * 4096)
        except (ConnectionResetError, BrokenPipeError):
            pass
        s.settimeout(3)
        try:
            answer = s.recv(4096)
        except (TimeoutError, ConnectionResetError):
            pass
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


@pytest.mark.slow
def test_connections_beyond_the_limit_are_refused_then_released(bounded_server: tuple[str, int]) -> None:
    """More than IMF_MAX_CONNECTIONS open connections: a new request gets 503 at once (uvicorn's
    limit_concurrency) instead of piling up; once the idle ones time out, /health answers again."""
    base, port = bounded_server
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    try:
        time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=5) as http:
            assert http.get("/health").status_code == 503
        time.sleep(2.5)  # past IMF_KEEPALIVE_S: the idle connections are closed by the server
        with httpx.Client(base_url=base, timeout=5) as http:
            assert http.get("/health").status_code == 200
    finally:
        for s in idle:
            s.close()


# ----------------------------------------------------------------------------- saved index


FINGERPRINT = "ab" * 32


@pytest.fixture()
def key_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This installation's key store, in the test's own folder (not the user's home)."""
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


@pytest.fixture()
def faiss_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call that would hand bytes to FAISS's index parser, recorded (and still made)."""
    calls: list[str] = []
    for name in ("read_index", "deserialize_index"):
        real = getattr(faiss, name)

        def record(*args, _real=real, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(faiss, name, record)
    return calls


def _saved_flat(folder: Path) -> tuple[np.ndarray, CandidateIndex]:
    xb = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    index = CandidateIndex.build(xb, "flat")
    index.save(folder, FINGERPRINT)
    return xb, index


def test_saved_index_of_this_installation_is_reused(tmp_path: Path, key_home: Path, faiss_reads: list[str]) -> None:
    folder = tmp_path / "index"
    xb, built = _saved_flat(folder)
    loaded = CandidateIndex.load(folder, "flat", FINGERPRINT, 16, 300)
    assert loaded is not None and faiss_reads
    np.testing.assert_array_equal(loaded.search(xb[:3], 5)[1], built.search(xb[:3], 5)[1])


def test_forged_index_and_sidecar_never_reach_faiss(tmp_path: Path, key_home: Path, faiss_reads: list[str]) -> None:
    """Whoever can write the index folder can write both files: arbitrary bytes, and a sidecar
    with their sha256 and the (public) model fingerprint. Refused before FAISS parses them."""
    folder = tmp_path / "index"
    _saved_flat(folder)
    meta = json.loads((folder / "flat.json").read_text())
    evil = b"IxFI" + os.urandom(4096)  # FAISS's flat-index magic, then anything
    (folder / "flat.faiss").write_bytes(evil)
    meta["sha256"] = hashlib.sha256(evil).hexdigest()
    # the best an attacker without this installation's key can do: a MAC under public inputs
    meta.pop("mac", None)
    meta["mac"] = hashlib.sha256(FINGERPRINT.encode() + evil).hexdigest()
    (folder / "flat.json").write_text(json.dumps(meta))
    faiss_reads.clear()
    assert CandidateIndex.load(folder, "flat", FINGERPRINT, 16, 300) is None
    assert faiss_reads == [], "forged bytes were handed to FAISS"


def test_index_saved_by_another_installation_is_refused(tmp_path: Path, key_home: Path, faiss_reads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle that arrives with an index/ folder (copied, downloaded, on a shared volume) was
    written under another key: rebuilt here rather than trusted."""
    folder = tmp_path / "index"
    _saved_flat(folder)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "elsewhere"))
    faiss_reads.clear()
    assert CandidateIndex.load(folder, "flat", FINGERPRINT, 16, 300) is None
    assert faiss_reads == []


def test_a_key_others_can_read_is_not_used(tmp_path: Path, key_home: Path) -> None:
    folder = tmp_path / "index"
    _saved_flat(folder)
    key = next(key_home.rglob("*.key"))
    assert key.stat().st_mode & 0o777 == 0o600 and key.parent.stat().st_mode & 0o077 == 0
    key.chmod(0o644)
    assert CandidateIndex.load(folder, "flat", FINGERPRINT, 16, 300) is None
