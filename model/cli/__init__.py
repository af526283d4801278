"""Command-line interface of the ML side: `imf train | evaluate | predict | bundle | data | features | plot`.

One module per command family (train, query: evaluate and predict, bundle, data: data and
features, plot: learning curves); this one builds the parser (and `imf --version`) and turns
user errors into one line. `service.cli` adds `imf serve` on top of these (the console script
`imf` points there, so that this package never imports the service). `python -m model ...` runs these commands alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from model import __version__
from model.cli.bundle import add_bundle
from model.cli.data import add_data, add_features
from model.cli.plot import add_plot
from model.cli.query import add_evaluate, add_predict
from model.cli.train import add_train
from model.errors import IMFError

log = logging.getLogger("imf")


def build_parser(extra: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imf", description="IMF multimodal knowledge-graph link prediction")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"imf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train, add_evaluate, add_predict, add_bundle, add_data, add_features, add_plot, *extra):
        add(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn user errors into one clear line on stderr (exit status 2)."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build it found: noise
    try:
        return int(args.handler(args) or 0)
    except IMFError as exc:
        print(f"imf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # invalid parameter values from the config dataclasses
        print(f"imf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # `imf train` catches an interrupt once training has started and writes the best model
        # so far itself (model.cli.train); one that gets here came before anything was written.
        print(f"imf {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
