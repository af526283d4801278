"""One home for every hyperparameter default: the config dataclasses (`IMFConfig`,
`TrainConfig`) declare each field once, with its default and its help text, and the command line
is built from those fields (`add_arguments`, `from_arguments`), so a default cannot drift
between the library, the CLI and the documentation.

A field becomes an option with `setting(default, "help text", ...)`; its flag is the field name
with dashes (`relation_dim` -> `--relation-dim`) unless `flag` says otherwise, its type comes
from the annotation (int, float, str, bool; `X | None` accepts X), and `parse` may replace the
converter (say, to refuse a negative number at the command line already). Fields made with
plain `field()` (or `cli=False`) are not options.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    flag: str | None = None,
    choices: Iterable[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    flags: dict[str, Any] | None = None,
    metavar: str | None = None,
    required: bool = False,
    cli: bool = True,
) -> Any:
    """A dataclass field that is also a command-line option.

    flags: several flags that each store a constant (a tri-state bool, say
    {"--per-answer": True, "--per-query": False}), mutually exclusive; `help` is then a dict
    flag -> help text. A bool field with default True and no `flags` becomes `--no-<name>`
    (or `flag`), which stores False; one with default False becomes `--<name>`.
    """
    meta = {"help": help, "cli": cli, "flag": flag, "choices": tuple(choices) if choices else None, "parse": parse, "flags": flags, "metavar": metavar, "required": required}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" where it says something: not for None or False, and not where the
    help text already explains its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _options(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli")]


def _base_type(cls: type, f: dataclasses.Field) -> Any:
    """The annotation's type without `| None`."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and args else hint


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *, exclude: Iterable[str] = ()) -> None:
    """Add an option for every `setting` field of the dataclass `cls` (except `exclude`)."""
    skip = set(exclude)
    for f in _options(cls):
        if f.name in skip:
            continue
        m = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if m["flags"]:
            group = parser.add_mutually_exclusive_group()
            for flag, const in m["flags"].items():
                group.add_argument(flag, dest=f.name, action="store_const", const=const, default=default, help=m["help"][flag])
            continue
        kind = _base_type(cls, f)
        if kind is bool:
            flag = m["flag"] or (f"--no-{f.name.replace('_', '-')}" if default else f"--{f.name.replace('_', '-')}")
            parser.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", help=m["help"])
            continue
        flag = m["flag"] or f"--{f.name.replace('_', '-')}"
        extra = {"required": True} if m["required"] else {"default": default}
        parser.add_argument(flag, dest=f.name, type=m["parse"] or kind, choices=m["choices"], metavar=m["metavar"], help=m["help"], **extra)


def from_arguments(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """An instance of `cls` from the parsed options `add_arguments` added (those absent from
    `args` keep their defaults), with `overrides` on top."""
    values = {f.name: getattr(args, f.name) for f in _options(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


__all__ = ["HelpFormatter", "add_arguments", "fraction", "from_arguments", "positive_int", "setting"]
