"""The `imf` console script: the ML commands of `model.cli` plus `imf serve`.

`imf serve [BUNDLE]` checks the bundle (a clear error before the server starts), then runs
uvicorn on `create_app`. With no bundle argument and no IMF_BUNDLE it serves artifacts/default,
the trained model shipped in the repository (scripts/train_default.sh rebuilds it); it never
trains at start.

What the HTTP server bounds (below the app, so before any middleware sees a request):

- connections: uvicorn's `limit_concurrency` = IMF_MAX_CONNECTIONS; with that many connections
  open, a request on any further one is answered 503 at once instead of queueing. uvicorn still
  accepts such connections (each holds a file descriptor), so the soft RLIMIT_NOFILE is raised
  to fit (`_raise_nofile`) and the container raises the hard one (docker-compose.yml `ulimits`).
- request-head time: uvicorn has no header timeout. Its keep-alive timer starts only after a
  first response and any received byte cancels it, so a connection that never sends a request,
  or sends one header line every few seconds, stays open for ever (100 such connections, or 300
  idle ones under `ulimit -n 256`, made /health fail). `BoundedHttpToolsProtocol` arms that timer
  when the connection opens too, and keeps it running until a request head is complete: a
  connection that has not delivered a whole request head within IMF_KEEPALIVE_S of opening (or
  of its previous response) is closed, trickling or not.
- request-head size: httptools (the C parser uvicorn uses when installed, as here) buffers a
  header of any length; the protocol answers 431 and closes once a head passes MAX_HEAD_BYTES.
  (`h11_max_incomplete_event_size` is the same bound for uvicorn's pure-Python h11 parser; it is
  passed too, for a server started with `--http h11`.)

The reverse proxy of the compose stack (deploy/nginx.conf) bounds the same things, tighter, in
front; these bounds hold for a server run without it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from pydantic import ValidationError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from model.bundle.format import read_manifest, verify_files
from model.cli import build_parser, run
from model.errors import IMFError
from service.app import create_app
from service.settings import DEFAULT_BUNDLE, Settings

log = logging.getLogger("imf")

# Largest request head (request line + headers) accepted: far above any real client's (browsers
# send a few KiB; nginx's default ceiling is 4 x 8 KiB), small enough that 1024 connections
# buffering one cost at most 64 MiB.
MAX_HEAD_BYTES = 64 * 1024
# File descriptors beyond IMF_MAX_CONNECTIONS: the listening socket, Redis, model files, logs.
FD_RESERVE = 256


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on every request head.

    The deadline is uvicorn's own keep-alive timer (IMF_KEEPALIVE_S, `timeout_keep_alive`),
    armed from the moment the connection opens as well as after each response, and cancelled
    only when a request head is complete: not by the first byte that arrives, as in uvicorn, which
    let a client hold a connection for ever by sending a header line now and then. A request
    whose head is complete (its body then has IMF_BODY_TIMEOUT_S, enforced by the app) and one
    being answered are never cut by it.

    Relies on uvicorn's HttpToolsProtocol internals (`timeout_keep_alive_task`,
    `_unset_keepalive_if_required`, the parser callbacks), pinned in constraints.txt; the tests in
    tests/test_deploy.py run a real server against it.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_pending = True  # bytes received now belong to a request head
        self._head_bytes = 0
        self._receiving = False
        self._boundary = False  # a head or a message ended during the current data_received
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn cancels the deadline on every received byte; while a head is incomplete only
        # its completion (on_headers_complete) or the connection's end may.
        if self._receiving and self._head_pending:
            return
        super()._unset_keepalive_if_required()

    def data_received(self, data: bytes) -> None:
        self._receiving, self._boundary = True, False
        try:
            super().data_received(data)
        finally:
            self._receiving = False
        if self.transport.is_closing() or not self._head_pending:
            return
        # Count only chunks that were all head: one in which a message ended may carry the end
        # of a large body, which is not the head's (counted from zero again instead).
        self._head_bytes = 0 if self._boundary else self._head_bytes + len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self.logger.warning("request head over %d bytes from %s: 431, connection closed", MAX_HEAD_BYTES, self.client)
            body = b"request head too large\n"
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._head_pending, self._boundary, self._head_bytes = False, True, 0
        HttpToolsProtocol._unset_keepalive_if_required(self)  # the head is in: the deadline is met
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # What follows is the next request's head (pipelined, or after the response). Its
        # deadline is armed when this response completes (on_response_complete).
        self._head_pending, self._boundary = True, True

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_pending = False
        HttpToolsProtocol._unset_keepalive_if_required(self)
        super().connection_lost(exc)


def _raise_nofile(needed: int) -> None:
    """Raise the soft open-files limit to `needed` (up to the hard limit), so that the connection
    limit, not the descriptor limit, is what refuses clients: many distributions start processes
    with a soft limit of 1024, below IMF_MAX_CONNECTIONS plus the reserve."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("open files limited to %d, below IMF_MAX_CONNECTIONS + %d = %d: raise the hard limit (ulimit -Hn, the container's nofile)", soft, FD_RESERVE, needed)


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP service (settings from IMF_* variables)")
    p.add_argument("bundle", nargs="?", type=Path, default=None, help="bundle directory (default: $IMF_BUNDLE or artifacts/default)")
    p.add_argument("--host", default=None, help="listen address (default: $IMF_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default: $IMF_PORT or 8000)")
    p.set_defaults(handler=cmd_serve)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in {"bundle": args.bundle, "host": args.host, "port": args.port}.items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"IMF_{'_'.join(str(x) for x in e['loc']).upper() or 'SETTINGS'}: {e['msg']}" for e in exc.errors())
        raise IMFError(f"invalid settings: {problems}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.bundle.exists():
        hint = "rebuild the shipped default with `bash scripts/train_default.sh`" if settings.bundle == DEFAULT_BUNDLE else f"train one with `imf train --dataset ... --out {settings.bundle}`"
        raise IMFError(f"{settings.bundle}: no such bundle ({hint})")
    verify_files(settings.bundle, read_manifest(settings.bundle))  # fail here, not inside the server
    logging.getLogger().setLevel(settings.log_level.upper())
    _raise_nofile(settings.max_connections + FD_RESERVE)
    # SIGTERM / SIGINT: uvicorn stops accepting connections, lets in-flight requests finish for
    # up to IMF_SHUTDOWN_TIMEOUT_S, then exits. The bounds are the module doc's.
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
        timeout_graceful_shutdown=int(math.ceil(settings.shutdown_timeout_s)), timeout_keep_alive=int(math.ceil(settings.keepalive_s)),
        http=BoundedHttpToolsProtocol, limit_concurrency=settings.max_connections, h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(extra=[add_serve]), argv)


if __name__ == "__main__":
    sys.exit(main())
