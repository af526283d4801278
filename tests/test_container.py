"""The container image and the compose stack, for real: builds the Dockerfile and brings
docker-compose.yml (the nginx proxy, the API and Redis) up with podman through
../shared/containers/compose.sh, with the `slice_bundle` model mounted read-only, then speaks
HTTP to it through the proxy, the stack's one published port.

Opt-in, because it needs podman and takes minutes: IMF_CONTAINER_TESTS=1 runs it (after
`eval "$(bash ../shared/containers/prepare.sh)"` succeeded); unset, it is skipped;
IMF_CONTAINER_TESTS=skip:REASON (what CI sets when prepare.sh exits 77) skips it showing REASON.

Timings (image build first and cached, stack start to ready) and the image size are written
to the terminal at the end and to container_report.json in the pytest base temp directory
(and to $IMF_CONTAINER_REPORT when set).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from model.bundle.format import load_bundle
from tests.helpers import free_port, wait_ready

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(os.environ.get("IMF_CONTAINER_SCRIPTS") or REPO.parent / "shared" / "containers")
UID = "10001"  # the Dockerfile's unprivileged user


def _skip_reason() -> str | None:
    flag = os.environ.get("IMF_CONTAINER_TESTS", "").strip()
    if flag == "1":
        return None
    if not flag:
        return "container tests are opt-in: set IMF_CONTAINER_TESTS=1 after `eval \"$(bash ../shared/containers/prepare.sh)\"` succeeded"
    if flag.startswith("skip:"):
        return f"container tests skipped: {flag[5:].strip() or 'no reason given'}"
    return f"IMF_CONTAINER_TESTS={flag!r}: only 1 runs the container tests"


SKIP = _skip_reason()
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


@dataclass
class Stack:
    project: str
    image: str
    base_url: str
    env: dict[str, str]
    model_dir: Path
    report: dict = field(default_factory=dict)

    def run(self, *cmd: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{shlex.join(cmd)} exited {proc.returncode}\n--- stdout\n{_tail(proc.stdout)}\n--- stderr\n{_tail(proc.stderr)}")
        return proc

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("bash", str(SCRIPTS / "compose.sh"), "-p", self.project, "-f", str(REPO / "docker-compose.yml"), *args, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        ids = self.run("podman", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}", "--filter", f"label=com.docker.compose.service={service}").stdout.split()
        assert len(ids) == 1, f"expected one running {service} container in {self.project}, got {ids}"
        return ids[0]

    def logs(self, service: str) -> str:
        try:
            proc = self.run("podman", "logs", self.container(service), check=False)
            return _tail(proc.stdout + proc.stderr)
        except AssertionError as exc:
            return str(exc)


def _podman_env() -> dict[str, str]:
    """This environment without the service's IMF_* settings (the runner's must not leak into
    the stack; IMF_CONTAINER_* of the shared scripts stay), plus what prepare.sh says podman
    needs here (`export NAME=VALUE` lines)."""
    proc = subprocess.run(["bash", str(SCRIPTS / "prepare.sh")], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"IMF_CONTAINER_TESTS=1 but {SCRIPTS / 'prepare.sh'} exited {proc.returncode}:\n{_tail(proc.stderr)}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMF_") or k.startswith("IMF_CONTAINER_")}
    for line in proc.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export "):].split("=", 1)
            env[name] = " ".join(shlex.split(value))
    # Keep the Dockerfile's HEALTHCHECK: podman builds OCI images by default, which have no field for it.
    env["BUILDAH_FORMAT"] = "docker"
    # A FAISS index (IMF_INDEX=auto would score this small graph exactly, without one), so the
    # container exercises retrieval and the read-only mount where the index cannot be saved.
    env["IMF_INDEX"] = "flat"
    return env


def _readable_copy(src: Path, dst: Path) -> Path:
    """The bundle (without any saved FAISS index), readable by the image's unprivileged user
    whatever the umask of the machine that wrote it."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("index", ".*"))
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def _wait_ready(stack: Stack, base_url: str, service: str | None, timeout: float = 240) -> dict:
    """Poll /ready until the model is loaded and the Redis cache is reachable; on failure the
    error quotes the service's container log."""
    return wait_ready(
        base_url, timeout, interval=0.25,
        until=lambda body: bool(body["cache"].get("ok")),
        output=lambda: f"--- logs\n{stack.logs(service)}" if service else "",
    )


def _report(config: pytest.Config, base: Path, report: dict) -> None:
    text = json.dumps(report, indent=2)
    (base / "container_report.json").write_text(text)
    if os.environ.get("IMF_CONTAINER_REPORT"):
        Path(os.environ["IMF_CONTAINER_REPORT"]).write_text(text)
    print(f"container report: {text}")
    # shown without -s: written to the terminal with output capturing suspended
    writer = config.pluginmanager.getplugin("terminalreporter")
    capman = config.pluginmanager.getplugin("capturemanager")
    if writer is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            writer.write_line("")
            writer.write_line(f"container report ({base / 'container_report.json'}): " + json.dumps(report))


@pytest.fixture(scope="module")
def stack(extras_bundle: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    t0 = time.monotonic()
    env = _podman_env()
    prepare_s = round(time.monotonic() - t0, 1)
    project = f"imftest{uuid.uuid4().hex[:8]}"
    image = f"localhost/imf-serve:{project}"
    port = free_port()
    model_dir = _readable_copy(extras_bundle, tmp_path_factory.mktemp("container") / "model")
    env.update(IMF_IMAGE=image, IMF_PORT=str(port), IMF_MODEL_DIR=str(model_dir), IMF_ALLOW_NEW_ENTITIES="true", IMF_ALLOW_KEYLESS_ENTITIES="true")
    s = Stack(project=project, image=image, base_url=f"http://127.0.0.1:{port}", env=env, model_dir=model_dir)
    s.report["prepare_s"] = prepare_s

    pidfile = Path(env.get("IMF_CONTAINER_STATE", "/var/tmp/imf-containers")) / "healthcheck.pid"
    checker_before = pidfile.read_text().strip() if pidfile.exists() else None
    try:
        # the CPU torch wheel for the build context (a copy from pip's find-links folder)
        t0 = time.monotonic()
        s.run("bash", str(REPO / "scripts" / "container_wheels.sh"), timeout=300)
        s.report["wheels_s"] = round(time.monotonic() - t0, 1)

        t0 = time.monotonic()
        build = s.compose("build", "api")
        s.report["build_first_s"] = round(time.monotonic() - t0, 1)
        # podman-compose does not fail when the build does: the fresh tag proves it worked
        if s.run("podman", "image", "exists", image, check=False).returncode != 0:
            raise AssertionError(f"the image was not built\n--- stdout\n{_tail(build.stdout, 8000)}\n--- stderr\n{_tail(build.stderr, 8000)}")
        image_id = s.run("podman", "image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
        t0 = time.monotonic()
        s.compose("build", "api")
        s.report["build_cached_s"] = round(time.monotonic() - t0, 1)
        s.report["rebuild_reused_cache"] = s.run("podman", "image", "inspect", "--format", "{{.Id}}", image).stdout.strip() == image_id
        s.report["image_size_mb"] = round(int(s.run("podman", "image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6)

        t0 = time.monotonic()
        s.compose("up", "-d", timeout=300)
        s.report["compose_up_s"] = round(time.monotonic() - t0, 1)
        ready = _wait_ready(s, s.base_url, "api")
        ready_at = time.time_ns()
        s.report["up_to_ready_s"] = round(time.monotonic() - t0, 1)
        started = int(s.run("podman", "inspect", "--format", "{{.State.StartedAt.UnixNano}}", s.container("api")).stdout)
        s.report["api_start_to_ready_s"] = round((ready_at - started) / 1e9, 2)
        s.report["ready"] = ready
        yield s
    finally:
        down = s.compose("down", "-t", "1", timeout=180, check=False)
        s.run("podman", "network", "rm", "-f", f"{project}_default", check=False)
        s.run("podman", "untag", image, check=False)  # its layers stay cached for the next run
        # compose.sh stops its healthcheck loop only on a plain `down`: stop the one this run started
        checker = pidfile.read_text().strip() if pidfile.exists() else None
        if checker and checker != checker_before:
            subprocess.run(["kill", checker], check=False, capture_output=True)
            pidfile.unlink(missing_ok=True)
        if s.report:
            _report(request.config, tmp_path_factory.getbasetemp(), s.report)
        leftovers = s.run("podman", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}", check=False).stdout.split()
        assert not leftovers, f"containers left after down: {leftovers}\n{_tail(down.stdout)}"


@pytest.fixture(scope="module")
def query(extras_bundle: Path) -> dict:
    """A real query of the mounted model, by entity name (as a user would send it)."""
    b = load_bundle(extras_bundle)
    h, r, t = b.triples["train"][0].tolist()
    return {"head": b.vocab.entity_names[h], "relation": b.vocab.relation_ids[r], "k": 5, "tail": b.vocab.entity_ids[t], "fingerprint": b.fingerprint}


def test_image_is_lean_unprivileged_and_cpu_only(stack: Stack) -> None:
    fmt = "{{.Config.User}}|{{json .Config.Healthcheck}}|{{json .Config.Cmd}}"
    user, health, cmd = stack.run("podman", "image", "inspect", "--format", fmt, stack.image).stdout.strip().split("|", 2)
    assert user.split(":")[0] == UID
    assert "/health" in health, health
    assert json.loads(cmd)[:2] == ["imf", "serve"]
    assert stack.report["image_size_mb"] < 2500, "a CUDA build of torch got in?"
    api = stack.container("api")
    assert stack.run("podman", "exec", api, "id", "-u").stdout.strip() == UID
    probe = (
        "import shutil, torch, os; "
        "assert torch.version.cuda is None, torch.__version__; "
        "tools = [t for t in ('gcc', 'cc', 'g++', 'make') if shutil.which(t)]; assert not tools, tools; "
        "junk = [p for p in ('/root/.cache/pip', '/tmp/wheels', '/src', '/src/data') if os.path.exists(p)]; assert not junk, junk"
    )
    stack.run("podman", "exec", "--user", "0", api, "python", "-c", probe)
    # the model is mounted read-only, and the service copes (it cannot save its FAISS index)
    assert stack.run("podman", "exec", api, "touch", "/models/default/probe", check=False).returncode != 0
    assert not (stack.model_dir / "index").exists()
    assert "index not saved" in stack.logs("api")


def test_predict_is_cached_in_redis_and_explain_works(stack: Stack, query: dict) -> None:
    body = {k: query[k] for k in ("head", "relation", "k")}
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        assert http.get("/health").json() == {"status": "ok"}
        first = http.post("/predict", json=body)
        assert first.status_code == 200, first.text
        first = first.json()
        assert first["model"] == query["fingerprint"] and first["cached"] is False
        assert first["query"]["head"]["name"] == query["head"] and len(first["predictions"]) == 5
        second = http.post("/predict", json=body).json()
        assert second["cached"] is True and second["predictions"] == first["predictions"]

        redis = stack.container("redis")
        keys = stack.run("podman", "exec", redis, "redis-cli", "--scan", "--pattern", "imf:*").stdout.split()
        mine = [k for k in keys if query["fingerprint"][:16] in k]
        assert len(mine) == 1, keys
        ttl = int(stack.run("podman", "exec", redis, "redis-cli", "ttl", mine[0]).stdout)
        assert 0 < ttl <= 3600

        exp = http.post("/explain", json={"head": query["head"], "relation": query["relation"], "tail": query["tail"]})
        assert exp.status_code == 200, exp.text
        exp = exp.json()
        assert exp["predictions"][0]["entity"] == query["tail"]
        assert exp["weights"] and exp["predictions"][0]["branches"]
        metrics = http.get("/metrics").text
        assert "imf_cache_up 1.0" in metrics


def test_second_replica_shares_the_redis_cache(stack: Stack, query: dict) -> None:
    """One more API container on the stack's network (what `--scale api=2` gives): it answers
    a query the first replica computed from Redis, without computing it."""
    body = {"head": query["head"], "relation": query["relation"], "k": 3}
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        assert http.post("/predict", json=body).status_code == 200
    port = free_port()
    name = f"{stack.project}_api_2"
    stack.run(
        "podman", "run", "-d", "--name", name, "--network", f"{stack.project}_default", "--read-only", "--tmpfs", "/tmp",
        # the same retrieval settings as the stack's replica (IMF_INDEX=flat): cache keys name
        # them, so a replica with other settings rightly computes its own answers
        "-e", "IMF_REDIS_URL=redis://redis:6379/0", "-e", "IMF_STORE_REDIS_URL=redis://store:6379/0", "-e", "IMF_INDEX=flat", "-e", "IMF_ALLOW_NEW_ENTITIES=true", "-e", "IMF_ALLOW_KEYLESS_ENTITIES=true", "-e", "IMF_ENTITY_SYNC_S=0.5", "-v", f"{stack.model_dir}:/models/default:ro",
        "-p", f"127.0.0.1:{port}:8000", stack.image,
    )
    try:
        t0 = time.monotonic()
        _wait_ready(stack, f"http://127.0.0.1:{port}", None, timeout=180)
        stack.report["replica_start_to_ready_s"] = round(time.monotonic() - t0, 1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            res = http.post("/predict", json=body).json()
        assert res["cached"] is True and res["model"] == query["fingerprint"]
        # an entity added on the first replica (embedded by the image's text encoder) is
        # served by the second one, through Redis
        with httpx.Client(base_url=stack.base_url, timeout=120) as http:
            r = http.post("/entities", json={"id": "new/ada", "name": "Ada Lovelace", "description": "English mathematician and writer"})
            assert r.status_code == 201, r.text
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            while True:
                res = http.post("/predict", json={"head": "new/ada", "relation": query["relation"], "k": 3})
                if res.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        assert res.status_code == 200, res.text
        assert res.json()["query"]["head"]["name"] == "Ada Lovelace"
    finally:
        stack.run("podman", "rm", "-f", "-t", "1", name, check=False)


def test_proxy_is_the_only_entry_and_closes_slow_clients(stack: Stack) -> None:
    """Only the proxy is published (on 127.0.0.1); it closes a client that dribbles its request
    head (one header line a second) after client_header_timeout (10 s in deploy/nginx.conf),
    where uvicorn alone kept such connections open for ever; both containers run with nofile
    raised (compose `ulimits`), and `imf serve` raised its own soft limit to match."""
    api, proxy = stack.container("api"), stack.container("proxy")
    assert stack.run("podman", "port", api, check=False).stdout.strip() == ""
    published = stack.run("podman", "port", proxy).stdout
    assert "127.0.0.1:" in published and "0.0.0.0" not in published, published
    limits = stack.run("podman", "exec", api, "cat", "/proc/1/limits").stdout
    open_files = next(line for line in limits.splitlines() if line.startswith("Max open files")).split()
    assert int(open_files[3]) >= 1024 + 256 and int(open_files[4]) >= 16384, limits

    port = int(stack.base_url.rsplit(":", 1)[1])
    t0 = time.monotonic()
    closed_after = None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        s.settimeout(1.0)
        while time.monotonic() - t0 < 30:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                s.recv(4096)  # b"" (closed) or an error answer (408): the head was cut off either way
                closed_after = time.monotonic() - t0
                break
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                closed_after = time.monotonic() - t0
                break
    stack.report["slow_header_closed_after_s"] = None if closed_after is None else round(closed_after, 1)
    assert closed_after is not None, "the proxy kept a slow-header connection open for 30 s"
    assert 8 <= closed_after <= 20, closed_after
    # and a normal client still gets through
    with httpx.Client(base_url=stack.base_url, timeout=10) as http:
        assert http.get("/health").json() == {"status": "ok"}
