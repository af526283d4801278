"""One home for every hyperparameter default: the config dataclasses (`IMFConfig`,
`TrainConfig`) declare each field once, with its default and its help text, and the command line
is built from those fields (`add_arguments`, `from_arguments`), so a default cannot drift
between the library, the CLI and the documentation.

A field becomes an option with `setting(default, "help text", ...)`; its flag is the field name
with dashes (`relation_dim` -> `--relation-dim`) unless `flag` says otherwise, its type comes
from the annotation (int, float, str, bool; `X | None` accepts X), and `parse` may replace the
converter (say, to refuse a negative number at the command line already). Fields made with
plain `field()` (or `cli=False`) are not options.

Which options did the user give? `add_arguments(..., mark_defaults=True)` stores each default
wrapped in `Default`, so that `explicit_arguments` can return only the values given on the
command line (a config file, sizing or a bundle then fills in the rest: model.training.run_config);
`from_arguments` unwraps the markers, so it works on either kind of namespace.
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


class Default:
    """An option's default as `add_arguments(mark_defaults=True)` stores it in the namespace:
    argparse replaces it by the converted value when the option is given, so a `Default` left
    in the namespace means "not given". Prints as the value itself (help texts)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Default({self.value!r})"

    def __str__(self) -> str:
        return str(self.value)


def unwrap(value: Any) -> Any:
    """The value behind a `Default` marker (anything else as it is)."""
    return value.value if isinstance(value, Default) else value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" where it says something: not for None or False, and not where the
    help text already explains its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = unwrap(action.default)
        if default is dataclasses.MISSING or default in (None, False, argparse.SUPPRESS) or "default" in text:
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


def option_type(cls: type, f: dataclasses.Field) -> Any:
    """The type a `setting` field's option converts to: its annotation without `| None`."""
    return _base_type(cls, f)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The `setting` fields of the dataclass `cls` that are command-line options."""
    return _options(cls)


def option_flag(f: dataclasses.Field) -> str:
    """The command-line flag of a `setting` field (the first one of a `flags` field)."""
    m = f.metadata
    if m.get("flags"):
        return next(iter(m["flags"]))
    if m.get("flag"):
        return m["flag"]
    return f"--{f.name.replace('_', '-')}"


def field_default(f: dataclasses.Field) -> Any:
    """The dataclass default of a field (its factory called)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    mark_defaults: bool = False,
) -> None:
    """Add an option for every `setting` field of the dataclass `cls` (except `exclude`).

    mark_defaults: store each default as `Default(value)` (see `explicit_arguments`), and make
    no option required (the caller checks, since a value may come from elsewhere: a config file);
    a required field's default is then `Default(dataclasses.MISSING)`.
    """
    skip = set(exclude)
    for f in _options(cls):
        if f.name in skip:
            continue
        m = f.metadata
        default = field_default(f)
        stored = Default(default) if mark_defaults else default
        if m["flags"]:
            group = parser.add_mutually_exclusive_group()
            for flag, const in m["flags"].items():
                group.add_argument(flag, dest=f.name, action="store_const", const=const, default=stored, help=m["help"][flag])
            continue
        kind = _base_type(cls, f)
        if kind is bool:
            flag = m["flag"] or (f"--no-{f.name.replace('_', '-')}" if default else f"--{f.name.replace('_', '-')}")
            parser.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", default=stored, help=m["help"])
            continue
        flag = m["flag"] or f"--{f.name.replace('_', '-')}"
        if m["required"]:
            extra = {"default": Default(dataclasses.MISSING)} if mark_defaults else {"required": True}
        else:
            extra = {"default": stored}
        parser.add_argument(flag, dest=f.name, type=m["parse"] or kind, choices=m["choices"], metavar=m["metavar"], help=m["help"], **extra)


def explicit_arguments(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The options of `cls` that were given on the command line: field name -> value. Needs a
    parser built with `add_arguments(..., mark_defaults=True)` (with plain defaults every
    option present in `args` counts as given)."""
    return {f.name: getattr(args, f.name) for f in _options(cls) if hasattr(args, f.name) and not isinstance(getattr(args, f.name), Default)}


def from_arguments(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """An instance of `cls` from the parsed options `add_arguments` added (those absent from
    `args` keep their defaults), with `overrides` on top."""
    values = {f.name: unwrap(getattr(args, f.name)) for f in _options(cls) if hasattr(args, f.name)}
    values = {k: v for k, v in values.items() if v is not dataclasses.MISSING}
    return cls(**{**values, **overrides})


__all__ = [
    "Default", "HelpFormatter", "add_arguments", "explicit_arguments", "field_default", "fraction", "from_arguments", "option_fields",
    "option_flag", "option_type", "positive_int", "setting", "unwrap",
]
