"""The app's middleware, outermost first:

    TrustedHost      400 for a Host header not on the allow-list (DNS rebinding)
    SecurityHeaders  nosniff, frame and referrer policy on every response, CSP on HTML pages
    ApiKey           401 before anything is read when IMF_API_KEY is set and not given
    BodyLimit        the whole body within IMF_BODY_TIMEOUT_S (408) and IMF_MAX_BODY_BYTES (413)
    Admission        503 beyond IMF_MAX_PENDING requests in progress
    Observe          request counts and latency by route, for /metrics

Each refuses as early and as cheaply as it can, so that no client without the key, nor one
that trickles its body, can hold what keyed clients need. Pure ASGI where they answer before the
app runs; their errors are the same JSON bodies as the app's (service.handlers).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.handlers import send_json_error
from service.metrics import Metrics
from service.schemas import request_limits
from service.settings import Settings
from service.state import AppState


def _host_name(value: str) -> str:
    """The host of a Host header, without its port ("[::1]:8000" -> "[::1]", "a:80" -> "a")."""
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class TrustedHost:
    """Pure ASGI middleware: a request whose Host header is not in `allowed` gets 400 (JSON).

    A browser page from another site can resolve its own name to this server's address (DNS
    rebinding) and read a keyless API; it cannot make the Host header say an allowed name.
    "*" in `allowed` accepts any host.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        host = _host_name(Headers(scope=scope).get("host", "")).lower()
        if host not in self.allowed:
            await send_json_error(send, 400, "invalid_host", "Host header not allowed (IMF_TRUSTED_HOSTS)")
            return
        await self.app(scope, receive, send)


# What a page the app serves may load: only from the app itself (the explorer page and the API
# docs are self-contained; their inline script and style are their own).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Pure ASGI middleware: security headers on every response, and a Content-Security-Policy
    on HTML ones (the explorer page, the API docs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if Headers(raw=headers).get("content-type", "").startswith("text/html"):
                    headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def key_matches(headers: Headers, expected: str) -> bool:
    """IMF_API_KEY given as `X-API-Key: KEY` or `Authorization: Bearer KEY` (compared in
    constant time)."""
    given = headers.get("x-api-key")
    auth = headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


class ApiKey:
    """Pure ASGI middleware: with IMF_API_KEY set, every path but `open_paths` needs the key,
    checked from the headers before the body is read (401 JSON, WWW-Authenticate: Bearer).
    Keyed by default: a route added later is protected unless it is named open."""

    def __init__(self, app: ASGIApp, settings: Settings, open_paths: Iterable[str]) -> None:
        self.app = app
        self.expected = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.expected is None or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if not key_matches(Headers(scope=scope), self.expected):
            await send_json_error(send, 401, "unauthorized", "missing or wrong API key (send X-API-Key or Authorization: Bearer)",
                                  [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Pure ASGI middleware: the request body, whole, before the app sees it: 413 (JSON) for a
    body over `max_bytes`, declared or streamed; 408 (JSON) for one that has not arrived within
    `timeout_s` of the first read (a trickled body ties up a connection for that long at most,
    and no admission slot at all). The body is replayed to the app, so an oversized or slow
    upload is refused before any parsing starts. It also makes the request limits of the
    settings known to the schemas' validators (service.schemas.request_limits)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.max_bytes = settings.max_body_bytes
        self.timeout_s = settings.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_limits.set(self.settings)
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body = message.get("body", b"")
                    size += len(body)
                    if size > self.max_bytes:
                        await self._too_large(send)
                        return
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await send_json_error(send, 408, "request_timeout", f"request body not received within {self.timeout_s:g}s",
                                  [(b"connection", b"close")])
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await send_json_error(send, 413, "payload_too_large", f"request body over {self.max_bytes} bytes")


class Admission:
    """Pure ASGI middleware: admission control, once per request, for requests whose API key
    has been checked (`ApiKey`) and whose body has arrived whole (`BodyLimit`), both outside it:
    a client that trickles its body, or has no key, never holds a slot that keyed clients need.

    With IMF_MAX_PENDING API requests in progress, a new one is answered 503 (JSON, with
    Retry-After) at once, before any parsing: refusing must cost next to nothing, or an overload
    spends the CPU on refusals. An admitted request keeps its slot until its response is sent,
    so it is never refused halfway. Health, readiness, metrics and docs are not counted.
    """

    EXEMPT = ("/health", "/ready", "/metrics", "/docs", "/openapi.json")

    def __init__(self, app: ASGIApp, get_state: Callable[[], AppState | None]) -> None:
        self.app = app
        self.get_state = get_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.get_state() if scope["type"] == "http" else None
        if state is None or scope["path"].startswith(self.EXEMPT):
            await self.app(scope, receive, send)
            return
        if state.inflight >= state.settings.max_pending:
            state.metrics.shed.labels("queue_full").inc()
            await send_json_error(send, 503, "overloaded", f"server busy: {state.inflight} requests in progress; retry shortly", [(b"retry-after", b"1")])
            return
        state.inflight += 1
        state.metrics.inflight.set(state.inflight)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.inflight -= 1
                state.metrics.inflight.set(state.inflight)

        async def send_then_release(message: Message) -> None:
            # Free the slot before the last byte goes out: a client that sends its next request
            # the moment it has this answer must find the slot free.
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_then_release)
        finally:
            release()


class Observe:
    """Pure ASGI middleware: each request's count and latency by route, for /metrics (the route
    template, e.g. /predict, once the router has matched it; "unmatched" otherwise). Pure ASGI,
    not an `@app.middleware("http")` function: that wraps every request in a task and a stream
    (about a third of a millisecond per request on the machines measured)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # what the client gets when the app fails before starting a response

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
