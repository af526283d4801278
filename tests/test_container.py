"""The container image and the compose stack, for real: builds the Dockerfile and brings
docker-compose.yml (the nginx proxy, two API replicas and the two Redis services) up with podman
through ../shared/containers/compose.sh, with the `slice_bundle` model mounted read-only, then
speaks HTTP to it through the proxy, the stack's one published port: both replicas answer, share
the cache and added entities, and one of them killed under load loses no request.

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
import threading
import time
import uuid
from collections import Counter
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
REPLICAS = ("api", "api-2")  # docker-compose.yml's API services, the upstreams of deploy/nginx.conf


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

    def address(self, service: str) -> str:
        """The service's address on the compose network, as the proxy's X-Upstream names it."""
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        ip = self.run("podman", "inspect", "--format", fmt, self.container(service)).stdout.strip()
        assert ip, f"{service} has no address"
        return f"{ip}:8000"


def answered_by(res: httpx.Response | str) -> str:
    """The replica that gave this answer (or X-Upstream value): the last address of the proxy's
    X-Upstream, which lists every replica tried ("10.89.0.5:8000, 10.89.0.6:8000" after a
    retry); "" when no replica saw the request."""
    upstream = res if isinstance(res, str) else res.headers.get("x-upstream", "")
    return upstream.split(",")[-1].strip()


def _wait_replicas(stack: Stack, timeout: float = 240) -> dict[str, str]:
    """Poll /ready through the proxy until every replica has answered it 200 with the Redis
    cache reachable (the proxy balances the polls over them); returns {address: service}.
    A replica still loading answers 503, which the proxy retries on the other one, so a 200
    counts for the replica that gave it (answered_by)."""
    addresses = {stack.address(service): service for service in REPLICAS}
    ready: set[str] = set()
    last = ""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=stack.base_url, timeout=10) as http:
        while time.monotonic() < deadline:
            try:
                res = http.get("/ready")
                last = f"{res.status_code} {res.headers.get('x-upstream')} {res.text[:300]}"
                if res.status_code == 200 and res.json()["cache"].get("ok"):
                    ready.add(answered_by(res))
            except httpx.HTTPError as exc:
                last = repr(exc)
            if set(addresses) <= ready:
                return addresses
            time.sleep(0.2)
    logs = "\n".join(f"--- {service} logs\n{stack.logs(service)}" for service in REPLICAS)
    raise AssertionError(f"not every replica became ready within {timeout} s: {addresses}, ready: {sorted(ready)}; last answer: {last}\n{logs}")


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
        _wait_replicas(s)
        s.report["up_to_replicas_ready_s"] = round(time.monotonic() - t0, 1)
        yield s
    finally:
        # -v: the project's store volume too (each run has its own project name)
        down = s.compose("down", "-t", "1", "-v", timeout=180, check=False)
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


def test_both_replicas_answer_and_share_the_cache_and_entities(stack: Stack, query: dict) -> None:
    """Through the proxy: both replicas answer (round robin); a query one replica computed is
    answered by the other from Redis (`cached: true`) with the same predictions; an entity added
    through one replica (embedded by the image's text encoder) is served by both, each computing
    its own answer."""
    addresses = {stack.address(service): service for service in REPLICAS}
    with httpx.Client(base_url=stack.base_url, timeout=60) as http:
        # (a) both replicas answer
        seen: Counter = Counter()
        deadline = time.monotonic() + 60
        i = 0
        while (i < 10 or len(seen) < len(REPLICAS)) and time.monotonic() < deadline:
            res = http.post("/predict", json={"head": query["head"], "relation": query["relation"], "k": 1 + i % 10})
            assert res.status_code == 200, res.text
            seen[addresses.get(answered_by(res), answered_by(res))] += 1
            i += 1
        assert set(seen) == set(REPLICAS), f"answered by {dict(seen)} of {addresses}"
        stack.report["round_robin"] = dict(seen)

        # (b) computed by one replica, a cache hit on the other (a query no test asked before)
        body = {"head": query["head"], "relation": query["relation"], "k": 9, "filter_known": False}
        first = http.post("/predict", json=body)
        assert first.status_code == 200, first.text
        assert first.json()["cached"] is False
        computed_by = answered_by(first)
        other = None
        deadline = time.monotonic() + 30
        while other is None and time.monotonic() < deadline:
            res = http.post("/predict", json=body)
            assert res.status_code == 200, res.text
            assert res.json()["cached"] is True and res.json()["predictions"] == first.json()["predictions"], res.text
            if answered_by(res) != computed_by:
                other = answered_by(res)
        assert other in addresses and computed_by in addresses, (computed_by, other, addresses)

        # an entity added through one replica is served by both
        r = http.post("/entities", json={"id": "new/ada", "name": "Ada Lovelace", "description": "English mathematician and writer"})
        assert r.status_code == 201, r.text
        served: dict[str, dict] = {}
        last = None
        deadline = time.monotonic() + 60
        k = 1
        while len(served) < len(REPLICAS) and time.monotonic() < deadline:
            # a new k each time: every answer is computed by the replica that gives it, not
            # taken from the cache (the other replica answers 404 until it has synced the entity)
            last = http.post("/predict", json={"head": "new/ada", "relation": query["relation"], "k": k})
            if last.status_code == 200:
                assert last.json()["cached"] is False
                served[addresses.get(answered_by(last), answered_by(last))] = last.json()
            else:
                assert last.status_code == 404, last.text
                time.sleep(0.2)
            k = k % 100 + 1
        assert set(served) == set(REPLICAS), f"served by {sorted(served)}; last answer {last.status_code if last else None}: {last.text if last else ''}"
        assert all(res["query"]["head"]["name"] == "Ada Lovelace" for res in served.values())


def test_proxy_is_the_only_entry_and_closes_slow_clients(stack: Stack) -> None:
    """Only the proxy is published (on 127.0.0.1); it closes a client that dribbles its request
    head (one header line a second) after client_header_timeout (10 s in deploy/nginx.conf),
    where uvicorn alone kept such connections open for ever; both containers run with nofile
    raised (compose `ulimits`), and `imf serve` raised its own soft limit to match."""
    proxy = stack.container("proxy")
    published = stack.run("podman", "port", proxy).stdout
    assert "127.0.0.1:" in published and "0.0.0.0" not in published, published
    for service in REPLICAS:
        api = stack.container(service)
        assert stack.run("podman", "port", api, check=False).stdout.strip() == "", f"{service} is published"
        limits = stack.run("podman", "exec", api, "cat", "/proc/1/limits").stdout
        open_files = next(line for line in limits.splitlines() if line.startswith("Max open files")).split()
        assert int(open_files[3]) >= 1024 + 256 and int(open_files[4]) >= 16384, limits

    # the body limit: over IMF_MAX_BODY_BYTES' default the proxy answers 413 itself, as JSON
    # in the API's error shape; at the limit the body reaches a replica (which finds no head)
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        big = http.post("/predict", content=b" " * 1_000_001, headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.json()["error"]["type"] == "payload_too_large", big.text
        assert answered_by(big) == ""  # no replica saw it
        at_limit = http.post("/predict", content=b"{}" + b" " * 999_998, headers={"content-type": "application/json"})
        assert at_limit.status_code == 422, at_limit.text

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


@pytest.fixture(scope="module")
def workload(extras_bundle: Path) -> list[dict]:
    """Many different queries of the mounted model (heads and relations of its first training
    triples), so that replicas compute answers rather than only read the cache."""
    b = load_bundle(extras_bundle)
    rows = b.triples["train"][:60].tolist()
    return [{"head": b.vocab.entity_ids[h], "relation": b.vocab.relation_ids[r], "tail": b.vocab.entity_ids[t]} for h, r, t in rows]


def test_killing_a_replica_loses_no_request(stack: Stack, workload: list[dict]) -> None:
    """Four clients, each sending one request after another on its own kept-alive connection,
    send /predict, /explain and /health through the proxy without pause; `api-2` is killed
    (SIGKILL: a crash, nothing finishes) once it has answered some of them. Every request the
    proxy can retry gets 200: the ones in flight on the killed replica, and the ones the proxy
    sends to its address before marking it failed, are retried on `api` (X-Upstream names
    both). The one kind no proxy can retry is an answer the killed replica had already begun
    (its status line and headers forwarded to the client, the body not yet sent): the client
    sees the connection close early, and must send it again itself. At most one per client can
    be caught so, at the instant of the kill; the test allows those and no other failure.

    Then the replica is started again and, once the proxy has re-read its address
    (nginx -s reload, with the traffic paused over the reload itself), answers again, with every
    request 200 meanwhile: the proxy retries its 503s (model still loading) on the other replica.

    Runs last: it changes the stack."""
    victim, survivor = "api-2", "api"
    victim_addr, survivor_addr = stack.address(victim), stack.address(survivor)
    victim_id = stack.container(victim)
    clients = 4
    # (start, status code or exception, X-Upstream ("" when no answer began), error body,
    # whether the answer began (headers received) and was then cut off)
    log: list[tuple[float, int | str, str, str, bool]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(first: int, step: int) -> None:
        with httpx.Client(base_url=stack.base_url, timeout=90) as http:
            i = first
            while not stop.is_set():
                q = workload[i % len(workload)]
                if i % 7 == 6:
                    request = ("GET", "/health", None)
                elif i % 7 == 5:
                    request = ("POST", "/explain", q)
                else:
                    request = ("POST", "/predict", {"head": q["head"], "relation": q["relation"], "k": 1 + i % 30})
                t0 = time.monotonic()
                status: int | str = ""
                upstream, text, cut = "", "", False
                try:
                    # streamed, so that an answer cut off after its headers still says who began it
                    with http.stream(request[0], request[1], json=request[2]) as res:
                        status, upstream = res.status_code, res.headers.get("x-upstream", "")
                        try:
                            res.read()
                        except httpx.HTTPError as exc:
                            status, cut = f"{res.status_code}, then {exc!r}", True
                        else:
                            text = "" if res.status_code == 200 else res.text[:300]
                except httpx.HTTPError as exc:
                    status = repr(exc)
                with lock:
                    log.append((t0, status, upstream, text, cut))
                i += step

    def entries() -> list[tuple[float, int | str, str, str, bool]]:
        with lock:
            return list(log)

    def retried_away_from_victim(after: float) -> int:
        return sum(1 for t0, _, up, _, _ in entries() if t0 >= after and up.startswith(victim_addr + ",") and up.endswith(survivor_addr))

    def wait(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    def start_traffic() -> list[threading.Thread]:
        stop.clear()
        threads = [threading.Thread(target=client, args=(n, clients), daemon=True) for n in range(clients)]
        for t in threads:
            t.start()
        return threads

    def stop_traffic(threads: list[threading.Thread]) -> None:
        stop.set()
        for t in threads:
            t.join(timeout=120)

    threads = start_traffic()
    reloaded_at = None
    try:
        wait(lambda: sum(1 for _, _, up, _, _ in entries() if up == victim_addr) >= 20, 60, f"{victim} answered fewer than 20 requests in 60 s")
        before_kill = time.monotonic()
        stack.run("podman", "kill", victim_id)
        killed_at = time.monotonic()
        # Go on until the proxy has sent at least one request to the dead replica and retried it
        # on the other (in flight at the kill, or the first one sent there afterwards), and for
        # a while beyond: at least 3 s and 100 requests after the kill.
        wait(lambda: retried_away_from_victim(before_kill - 5) >= 1 and time.monotonic() - killed_at >= 3
             and sum(1 for t0, *_ in entries() if t0 > killed_at) >= 100, 60, "no request was retried away from the killed replica in 60 s")
        after_kill = [entry for entry in entries() if entry[0] > killed_at]
        retried = retried_away_from_victim(before_kill - 5)

        # Recovery: started again (a new address on the compose network), the proxy re-reads the
        # replicas' addresses, and both answer again, every request 200 while the replica loads
        # its model. Traffic pauses over the reload itself: nginx's old workers close their idle
        # client keep-alive connections, and a request a client sends on one at that instant is
        # reset (a keep-alive race of any HTTP server's graceful restart, not the replicas' matter).
        stop_traffic(threads)
        stack.run("podman", "start", victim_id)
        proxy = stack.container("proxy")

        def workers() -> set[str]:  # nginx's worker processes: the children of its master, PID 1
            return set(stack.run("podman", "exec", proxy, "cat", "/proc/1/task/1/children").stdout.split())

        old_workers = workers()
        stack.run("podman", "exec", proxy, "nginx", "-s", "reload")
        wait(lambda: (now := workers()) and not now & old_workers, 30, "nginx's old workers did not exit within 30 s of the reload")
        reloaded_at = time.monotonic()
        threads = start_traffic()
        _wait_replicas(stack, timeout=180)
        stack.report["replica_restart_to_ready_s"] = round(time.monotonic() - reloaded_at, 1)
        new_addr = stack.address(victim)
        wait(lambda: any(up == new_addr for t0, _, up, _, _ in entries() if t0 > reloaded_at), 30, f"the restarted {victim} got no traffic")
    finally:
        stop_traffic(threads)

    failed = [entry for entry in log if entry[1] != 200]
    # not retryable: begun by the killed replica alone (no retry in X-Upstream), before the kill,
    # then cut off; anything else that failed is a request the proxy could have retried
    begun = [e for e in failed if e[4] and e[2] == victim_addr and e[0] < killed_at]
    lost = [e for e in failed if e not in begun]
    stack.report["kill"] = {
        "requests": len(log), "after_kill": len(after_kill), "retried": retried,
        "cut_off_mid_answer": len(begun), "lost": len(lost),
        "victim_address_after_restart_changed": new_addr != victim_addr,
    }
    when = [f"{e[0] - killed_at:+.2f} s after the kill" + (f", {e[0] - reloaded_at:+.2f} s after the reload" if reloaded_at else "") for e in lost]
    assert not lost, f"{len(lost)} of {len(log)} requests failed that the proxy could retry, e.g. {list(zip(lost, when))[:5]}"
    assert len(begun) <= clients, begun
    assert all(answered_by(up) == survivor_addr for _, _, up, _, _ in after_kill), "the killed replica answered after the kill"
