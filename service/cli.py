"""The `imf` console script: the ML commands of `model.cli` plus `imf serve`.

`imf serve [BUNDLE]` checks the bundle (a clear error before the server starts), then runs
uvicorn on `create_app`. With no bundle argument and no IMF_BUNDLE it serves artifacts/default,
the trained model shipped in the repository (scripts/train_default.sh rebuilds it); it never
trains at start.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from model.bundle.format import read_manifest, verify_files
from model.cli import build_parser, run
from model.errors import IMFError
from service.app import create_app
from service.settings import DEFAULT_BUNDLE, Settings

log = logging.getLogger("imf")


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
    # SIGTERM / SIGINT: uvicorn stops accepting connections, lets in-flight requests finish for
    # up to IMF_SHUTDOWN_TIMEOUT_S, then exits.
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
        timeout_graceful_shutdown=int(math.ceil(settings.shutdown_timeout_s)), timeout_keep_alive=int(math.ceil(settings.keepalive_s)),
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(extra=[add_serve]), argv)


if __name__ == "__main__":
    sys.exit(main())
