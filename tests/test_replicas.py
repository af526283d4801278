"""The replica stack as written (no container engine needed): docker-compose.yml runs two API
replicas with the same settings, and deploy/nginx.conf balances over both of them, retries on
another replica only what is safe to send twice, and keeps its timeouts and body limit in step
with the service's defaults (service/settings.py). tests/test_container.py runs the stack for
real (replicas answering, sharing the cache, one killed under load)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
NGINX = REPO / "deploy" / "nginx.conf"


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]


def _replicas(services: dict) -> list[str]:
    """The API replicas: every service running the API image."""
    image = services["api"]["image"]
    return sorted(name for name, svc in services.items() if svc.get("image") == image)


def _conf() -> str:
    """deploy/nginx.conf without its comments."""
    return re.sub(r"#[^\n]*", "", NGINX.read_text(encoding="utf-8"))


def _block(conf: str, head: str) -> str:
    """The body of the first `head { ... }` block (no nested blocks inside these; braces in
    quoted strings, such as a JSON body, do not count)."""
    m = re.search(re.escape(head) + r"\s*\{", conf)
    assert m, f"deploy/nginx.conf has no block {head!r}"
    quote = None
    for i in range(m.end(), len(conf)):
        c = conf[i]
        if quote:
            quote = None if c == quote and conf[i - 1] != "\\" else quote
        elif c in "'\"":
            quote = c
        elif c == "}":
            return conf[m.end():i]
    raise AssertionError(f"block {head!r} is not closed")


def _directive(text: str, name: str) -> str | None:
    m = re.search(rf"^\s*{name}\s+([^;]*);", text, flags=re.MULTILINE)
    return m.group(1).strip() if m else None


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert m, value
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]


def _bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG])?", value)
    assert m, value
    return int(m.group(1)) * {"k": 1024, "m": 1024**2, "g": 1024**3, None: 1}[m.group(2) and m.group(2).lower()]


def test_compose_runs_two_replicas_with_the_same_settings() -> None:
    services = _services()
    replicas = _replicas(services)
    assert replicas == ["api", "api-2"], replicas
    api, other = services["api"], services["api-2"]
    # one build (the image `api` tags), everything else identical: settings, mounts, limits
    assert "build" in api and "build" not in other
    assert {k: v for k, v in api.items() if k != "build"} == other
    for name in replicas:
        assert "ports" not in services[name], f"{name} must be reached through the proxy only"
        env = services[name]["environment"]
        assert env["IMF_REDIS_URL"] == "redis://redis:6379/0" and env["IMF_STORE_REDIS_URL"] == "redis://store:6379/0"
    assert set(replicas) <= set(services["proxy"]["depends_on"])


def test_proxy_balances_over_every_replica() -> None:
    conf = _conf()
    upstream = _block(conf, "upstream imf_api")
    servers = re.findall(r"^\s*server\s+([\w.-]+):8000\b([^;]*);", upstream, flags=re.MULTILINE)
    assert sorted(host for host, _ in servers) == _replicas(_services())
    for _, params in servers:
        # a failed replica is rested, then tried again (max_fails=0 would never rest it)
        assert re.search(r"max_fails=[1-9]", params) and "fail_timeout=" in params, params
    assert _directive(upstream, "zone"), "the workers must share which replica is failing"
    assert _directive(upstream, "keepalive")
    assert "$upstream_addr" in (_directive(conf, "add_header") or ""), "answers must say which replica gave them"


def test_proxy_retries_reads_but_never_resends_a_write() -> None:
    """POST /predict, /predict/batch, /explain and /score are reads: retried on another replica
    even after one received them (non_idempotent). Everything else, POST /entities included,
    goes through `location /`, where nginx never resends a POST that reached a replica."""
    conf = _conf()
    m = re.search(r"location\s+~\s+(\S+)\s*\{", conf)
    assert m, "no regex location for the read endpoints"
    pattern, reads = re.compile(m.group(1)), _block(conf, m.group(0)[:-1].rstrip())
    for path in ("/predict", "/predict/batch", "/explain", "/score"):
        assert pattern.search(path), path
    for path in ("/entities", "/predict/other", "/health", "/"):
        assert not pattern.search(path), path
    retry = (_directive(reads, "proxy_next_upstream") or "").split()
    assert {"error", "timeout", "http_503", "non_idempotent"} <= set(retry), retry
    assert "proxy_pass" in reads

    rest = _block(conf, "location /")
    retry = (_directive(rest, "proxy_next_upstream") or "").split()
    assert {"error", "timeout", "http_503"} <= set(retry) and "non_idempotent" not in retry, retry
    assert conf.count("non_idempotent") == 1, "non_idempotent outside the read location"
    assert _directive(conf, "proxy_next_upstream_tries") == "2"


def test_proxy_limits_match_the_service_defaults() -> None:
    conf = _conf()
    defaults = Settings()
    # the same body limit as the API's, in bytes, so that the proxy's 413 and the API's agree
    assert _bytes(_directive(conf, "client_max_body_size")) == defaults.max_body_bytes
    # long enough for the API's longest answer, after which the API answers 503 itself
    assert _seconds(_directive(conf, "proxy_read_timeout")) > defaults.request_timeout_s
    assert _seconds(_directive(conf, "proxy_connect_timeout")) <= 5
    # idle upstream connections dropped before uvicorn's keep-alive closes them
    assert _seconds(_directive(_block(conf, "upstream imf_api"), "keepalive_timeout")) < defaults.keepalive_s


def test_proxy_errors_are_json() -> None:
    """nginx's own 413/502/503/504 answer in the API's error shape, not as HTML pages."""
    conf = _conf()
    pages = dict(re.findall(r"^\s*error_page\s+([^;@]*?)\s*(@\w+)\s*;", conf, flags=re.MULTILINE))
    covered = {code for codes in pages for code in codes.split() if code.isdigit()}
    assert {"413", "502", "503", "504"} <= covered, pages
    for name in pages.values():
        body = _block(conf, f"location {name}")
        assert _directive(body, "default_type") == "application/json"
        m = re.search(r"return\s+(\d+)\s+'([^']*)'", body)
        assert m and re.fullmatch(r'\{"error": \{"type": "\w+", "message": "[^"]+"\}\}', m.group(2)), body
