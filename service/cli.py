"""The `imf` console script: the ML commands of `model.cli` plus `imf serve`.

`imf serve [BUNDLE]` checks the bundle (a clear error before the server starts), then runs
uvicorn on `create_app`. With no bundle argument and no IMF_BUNDLE it serves artifacts/default,
training that bundled default model first (FB15k-237, a few minutes on 2 CPU cores, with a
progress bar) when it does not exist yet; later starts take seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from model.cli import build_parser, run
from model.errors import IMFError

log = logging.getLogger("imf")

# The bundled default: what `imf serve` trains when artifacts/default is missing. Small and
# time-boxed so a fresh clone serves within minutes on 2 CPU cores; docs/benchmarks.md says how
# good it is and how to train a better one. No dropout: in a 4-minute budget on FB15k-237 it
# reached valid MRR 0.080 against 0.030 with TuckER's dropouts (which pay off only over many
# epochs).
DEFAULT_TRAINING = [
    "--dataset", "fb15k-237", "--dim", "64", "--epochs", "100", "--lr", "0.01",
    "--input-dropout", "0", "--hidden-dropout1", "0", "--hidden-dropout2", "0",
    "--max-minutes", "5", "--patience", "100",
]


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP service (settings from IMF_* variables)")
    p.add_argument("bundle", nargs="?", type=Path, default=None, help="bundle directory (default: $IMF_BUNDLE or artifacts/default)")
    p.add_argument("--host", default=None, help="listen address (default: $IMF_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default: $IMF_PORT or 8000)")
    p.add_argument("--no-train", action="store_true", help="fail instead of training the default model when it is missing")
    p.set_defaults(handler=cmd_serve)


def _settings(args: argparse.Namespace):
    from service.settings import Settings

    overrides = {k: v for k, v in {"bundle": args.bundle, "host": args.host, "port": args.port}.items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"IMF_{'_'.join(str(x) for x in e['loc']).upper() or 'SETTINGS'}: {e['msg']}" for e in exc.errors())
        raise IMFError(f"invalid settings: {problems}") from None


def ensure_default_bundle(path: Path) -> None:
    """Train the bundled default model into `path` (atomically) when it is missing."""
    from model.cli import main as model_main

    log.info("no model at %s yet: training the bundled default (FB15k-237, about 5 minutes)", path)
    code = model_main(["train", *DEFAULT_TRAINING, "--out", str(path)])
    if code != 0:
        raise IMFError(f"training the default model into {path} failed (exit {code})")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from model.bundle import read_manifest, verify_files
    from service.app import create_app
    from service.settings import DEFAULT_BUNDLE

    settings = _settings(args)
    explicit = args.bundle is not None or "IMF_BUNDLE" in os.environ
    if not settings.bundle.exists():
        if explicit or args.no_train or settings.bundle != DEFAULT_BUNDLE:
            raise IMFError(f"{settings.bundle}: no such bundle (train one with `imf train --dataset ... --out {settings.bundle}`)")
        ensure_default_bundle(settings.bundle)
    verify_files(settings.bundle, read_manifest(settings.bundle))  # fail here, not inside the server
    logging.getLogger().setLevel(settings.log_level.upper())
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(extra=[add_serve]), argv)


if __name__ == "__main__":
    sys.exit(main())
