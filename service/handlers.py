"""Errors to HTTP, in one place: every error leaves as a JSON body
`{"error": {"type", "message", "field"?, "suggestions"?, "candidates"?, "details"?}}` with a
status that fits (service.errors lists them), never a stack trace."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from service.errors import ServiceError

log = logging.getLogger(__name__)


def error_body(kind: str, message: str, **extra: Any) -> dict:
    return {"error": {"type": kind, "message": message, **{k: v for k, v in extra.items() if v is not None}}}


async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    body = error_body(exc.code, exc.message, field=exc.field, suggestions=exc.suggestions, candidates=exc.candidates)
    return JSONResponse(body, status_code=exc.status, headers=headers)


MAX_ERROR_DETAILS = 10  # a 422 lists this many validation errors, and counts them all


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the first invalid field; at most MAX_ERROR_DETAILS details, with the total
    (the answer stays small whatever the request: one with 660,000 errors once gave 56 MB)."""
    errors = exc.errors()
    details = [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors[:MAX_ERROR_DETAILS]
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(x for x in first["loc"] if x != "body") or "body"
    return JSONResponse(error_body("validation_error", f"{where}: {first['msg']}", field=where, details=details, errors=len(errors)), status_code=422)


async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(error_body(kind, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, hidden from the client."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal_error", "internal error; see the server log"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected_error)


async def send_json_error(send: Send, status: int, kind: str, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An error response written straight to ASGI (for middleware that answers before the app)."""
    body = json.dumps(error_body(kind, message)).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
