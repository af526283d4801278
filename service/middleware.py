"""The app's middleware, outermost first: `Admission` (load shedding before anything is read),
`BodyLimit` (413 for oversized bodies before parsing), and `observe` (request counts and
latency by route, for /metrics). Pure ASGI where they answer before the app runs."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.handlers import send_json_error
from service.metrics import Metrics
from service.state import AppState


class Admission:
    """Pure ASGI middleware: admission control before any parsing, once per request.

    With IMF_MAX_PENDING API requests in progress, a new one is answered 503 (JSON, with
    Retry-After) at once, without reading its body: refusing must cost next to nothing, or an
    overload spends the CPU on refusals. An admitted request keeps its slot until its response
    is sent, so it is never refused halfway. Health, readiness, metrics and docs are not counted.
    """

    EXEMPT = ("/health", "/ready", "/metrics", "/docs", "/openapi.json", "/redoc")

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


class BodyLimit:
    """Pure ASGI middleware: 413 (JSON) for bodies over the limit, declared or streamed.

    The body is read here first (it is small by definition) and replayed to the app, so an
    oversized chunked upload is refused before any parsing starts.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        await send_json_error(send, 413, "payload_too_large", f"request body over {self.max_bytes} bytes")


def observer(metrics: Metrics) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """An HTTP middleware function recording each request's count and latency by route."""

    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    return observe
