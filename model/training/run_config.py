"""A run's configuration from its four sources: command line > config file > sized > default.

`imf train --config run.toml` reads a TOML file (stdlib `tomllib`: no dependency; comments and
typed values; TOML rather than YAML because a TOML value's type is what it looks like, where
YAML reads `no` as false and `1e-3` as a string). Its keys are the field names of `TrainConfig`
and `IMFConfig` (the options' names with underscores), under `[training]` and `[model]`, or at
the top level (the names are unique across the two):

    # run.toml
    [training]
    dataset = "data/my-graph"   # relative paths, as on the command line: from the current folder
    epochs = 100
    lr = 0.002
    valid_subset = "none"       # what --valid-subset none means: the whole validation split

    [model]
    dim = 128

Each value of the resolved configuration comes from the first of

    flag        the command line
    config      the --config file
    bundle      with --init-from, the model hyperparameters of that bundle
    sized       `model.training.sizing.sized_settings` for the graph's sizes (not with --no-sizing)
    default     the dataclass default

(`checkpoint` for a resumed run: its own configuration, `resume_config`). `ResolvedConfig.to_toml`
writes the result as a file `--config` accepts back, each value's source in a comment (a
default derived from other settings, such as relation_dim from dim, as a commented-out line).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import numbers
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import option_fields, option_flag, option_type
from model.errors import IMFError
from model.network.imf import IMFConfig
from model.training import sizing
from model.training.config import TrainConfig

log = logging.getLogger(__name__)

SECTIONS: dict[str, type] = {"training": TrainConfig, "model": IMFConfig}
SOURCES = ("flag", "config", "bundle", "sized", "checkpoint", "default")


class ConfigError(IMFError):
    """A config file is not valid TOML, or holds an unknown key or a value of the wrong type."""


def _table() -> dict[str, tuple[type, dataclasses.Field]]:
    """Every option's field name -> (its dataclass, the field)."""
    return {f.name: (cls, f) for cls in SECTIONS.values() for f in option_fields(cls)}


def _section_of(cls: type) -> str:
    return next(name for name, c in SECTIONS.items() if c is cls)


def _line_of(text: str, section: str | None, key: str) -> int | None:
    """The line of `key = ...` in `section` ([training] / [model], None: top level) of a TOML
    text; None when it is not written plainly (a quoted or dotted key)."""
    current: str | None = None
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for lineno, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
        if header:
            current = header.group(1)
        elif current == section and pattern.match(line):
            return lineno
    return None


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _none_word(f: dataclasses.Field) -> bool:
    """Whether the option reads "none" as None (--valid-subset none): then "none" is how a
    config file writes None, which TOML has no literal for."""
    parse = f.metadata.get("parse")
    if parse is None:
        return False
    try:
        return parse("none") is None
    except Exception:
        return False


def coerce(cls: type, f: dataclasses.Field, value: Any) -> Any:
    """A config-file value for the option `f` of `cls`, checked like its command-line form:
    the TOML type must be the field's (an int where a float is expected is fine, a string where
    a number is expected is not), then the option's own parser and choices apply. ValueError
    with the reason otherwise."""
    kind = option_type(cls, f)
    m = f.metadata
    parse = m.get("parse")
    if isinstance(value, str) and value.strip().lower() == "none" and kind is not str and typing.get_origin(kind) is not list:
        if _none_word(f):
            return None
        raise ValueError(f"expected {_type_name(kind)}; \"none\" is not a value of this option")
    if typing.get_origin(kind) is list:  # modalities: a list of names, or the option's own spelling
        if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
            return [v.strip() for v in value]
        if isinstance(value, str):
            return parse(value) if parse else [value]
        raise ValueError(f"expected a list of strings, got {_toml_type(value)}")
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_toml_type(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_toml_type(value)}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {_toml_type(value)}")
        value = float(value)
    elif kind is str and not isinstance(value, str):
        raise ValueError(f"expected a string, got {_toml_type(value)}")
    if m.get("choices") and value not in m["choices"]:
        raise ValueError(f"{value!r} is not one of {', '.join(repr(c) for c in m['choices'])}")
    if parse is not None:
        try:
            return parse(str(value))
        except Exception as exc:  # argparse.ArgumentTypeError, ValueError: the option's own message
            raise ValueError(str(exc) or f"invalid value {value!r}") from exc
    return value


def _type_name(kind: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, str(kind))


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options a TOML config file sets: field name -> value, checked and converted like
    the command line's. ConfigError naming the file, the line and the key of the first problem
    (invalid TOML, an unknown or misplaced key, a wrong type or value)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    table = _table()
    known = sorted(table)
    values: dict[str, Any] = {}

    def where(section: str | None, key: str) -> str:
        line = _line_of(text, section, key)
        return f"{path}:{line}" if line else str(path)

    def take(section: str | None, key: str, value: Any) -> None:
        if key not in table:
            if isinstance(value, dict):
                raise ConfigError(f"{where(None, key)}: unknown section [{key}] (known: {', '.join(f'[{s}]' for s in SECTIONS)}){_suggest(key, list(SECTIONS))}")
            raise ConfigError(f"{where(section, key)}: unknown key {key!r}{' in [' + section + ']' if section else ''}{_suggest(key, known)}")
        cls, f = table[key]
        if section is not None and SECTIONS[section] is not cls:
            raise ConfigError(f"{where(section, key)}: {key!r} belongs under [{_section_of(cls)}], not [{section}]")
        if key in values:
            raise ConfigError(f"{where(section, key)}: {key!r} is set twice (at the top level and under [{_section_of(cls)}])")
        try:
            values[key] = coerce(cls, f, value)
        except ValueError as exc:
            raise ConfigError(f"{where(section, key)}: {key} ({option_flag(f)}): {exc}") from exc

    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where(None, key)}: {key!r} must be a section ([{key}]), got {_toml_type(value)}")
            for sub, sub_value in value.items():
                take(key, sub, sub_value)
        else:
            take(None, key, value)
    return values


# ----------------------------------------------------------------------------- resolution


@dataclass
class ResolvedConfig:
    """The configuration of a run and where each value came from (SOURCES): `sources` maps
    every option's field name, of both dataclasses, to its source."""

    train: TrainConfig
    model: IMFConfig
    sources: dict[str, str]

    def values(self) -> dict[str, Any]:
        """Every option's resolved value, by field name."""
        return {name: getattr(self.train if cls is TrainConfig else self.model, name) for name, (cls, _f) in _table().items()}

    def given(self, *sources: str) -> dict[str, Any]:
        """The values that came from the given sources."""
        return {k: v for k, v in self.values().items() if self.sources.get(k) in sources}

    def to_toml(self, header: str = "") -> str:
        """The resolved configuration as a TOML file that `imf train --config` reads back to the
        same values, each followed by its source as a comment. A None that the option cannot
        spell (`threads` left to torch, say) is a comment line: absent, it is None again."""
        lines = [
            "# imf train configuration (imf train --config FILE reads this file back).",
            "# After each value, where it came from: flag (the command line), config (a --config file),",
            "# bundle (--init-from), sized (for this graph's size), checkpoint (--resume), default.",
        ]
        if header:
            lines += [f"# {h}" for h in header.splitlines()]
        for section, cls in SECTIONS.items():
            obj = self.train if cls is TrainConfig else self.model
            lines += ["", f"[{section}]"]
            for f in option_fields(cls):
                value = getattr(obj, f.name)
                source = self.sources.get(f.name, "default")
                if value is None:
                    if _none_word(f):
                        lines.append(f'{f.name} = "none"  # {source}')
                    else:
                        lines.append(f"# {f.name} is unset  # {source}")
                    continue
                if source == "default" and f.default is None:
                    # Derived from other settings (relation_dim from dim, label smoothing from the
                    # loss): left out, it follows them again when they change.
                    lines.append(f"# {f.name} = {toml_value(value)}  # default, derived from the other settings")
                    continue
                lines.append(f"{f.name} = {toml_value(value)}  # {source}")
        return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """A Python value (str, bool, int, float, list of those) as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"  # "1e-05", "inf", "nan" are TOML floats too
    if isinstance(value, str):
        # A TOML basic string: backslash, quote and control characters escaped.
        out = []
        for ch in value:
            if ch in ('"', "\\"):
                out.append("\\" + ch)
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\u{ord(ch):04x}"))
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python number it holds (sizing may compute with NumPy)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def sized_defaults(num_entities: int, num_relations: int, num_train: int) -> tuple[dict[str, Any], str]:
    """(`model.training.sizing.sized_settings` for these sizes, the graph's size in words).
    Keys that are not options are dropped with a warning."""
    values = {k: _plain(v) for k, v in sizing.sized_settings(num_entities, num_relations, num_train).items()}
    table = _table()
    unknown = sorted(k for k in values if k not in table)
    if unknown:
        log.warning("sizing returned unknown settings %s; ignored", unknown)
    return {k: v for k, v in values.items() if k in table}, sizing.describe_graph(num_entities, num_relations, num_train)


def _build(cls: type, values: dict[str, Any], sources: dict[str, str], origin: Mapping[str, str]) -> Any:
    """cls(**values); a ValueError of its checks names where each offending value came from."""
    try:
        return cls(**values)
    except ValueError as exc:
        msg = str(exc)
        named = [k for k in values if re.search(rf"\b{re.escape(k)}\b", msg)]
        hint = "; ".join(f"{k} from {origin.get(sources[k], sources[k])}" for k in named if sources.get(k) != "default")
        raise IMFError(f"{msg}{f' ({hint})' if hint else ''}") from exc


def resolve(
    *,
    flags: Mapping[str, Any],
    file: Mapping[str, Any] | None = None,
    file_name: str | Path | None = None,
    sized: Mapping[str, Any] | None = None,
    bundle_model: Mapping[str, Any] | None = None,
    require: tuple[str, ...] = (),
) -> ResolvedConfig:
    """Each option's value from the first source that has it: `flags` (the command line),
    `file` (a config file's values), `bundle_model` (the model hyperparameters of an --init-from
    bundle; model options only), `sized`, else the dataclass default.

    relation_dim is defined relative to dim (None: the same): a sized relation_dim is not used
    when dim itself was given (flag, config file), so --dim 64 alone still means d_r = 64.
    require: options that must come from the flags or the file (IMFError naming them otherwise).
    """
    file = file or {}
    sized = sized or {}
    table = _table()
    missing = [k for k in require if k not in flags and k not in file]
    if missing:
        raise IMFError(" and ".join(f"{option_flag(table[k][1])} is required (or {k} = ... in a --config file)" for k in missing))
    values: dict[type, dict[str, Any]] = {cls: {} for cls in SECTIONS.values()}
    sources: dict[str, str] = {}
    for name, (cls, _f) in table.items():
        if name in flags:
            values[cls][name], sources[name] = flags[name], "flag"
        elif name in file:
            values[cls][name], sources[name] = file[name], "config"
        elif cls is IMFConfig and bundle_model is not None and name in bundle_model:
            values[cls][name], sources[name] = bundle_model[name], "bundle"
        elif name in sized and not (name == "relation_dim" and sources.get("dim") in ("flag", "config")):
            values[cls][name], sources[name] = sized[name], "sized"
        else:
            sources[name] = "default"
    origin = {"flag": "the command line", "config": str(file_name or "the config file"), "sized": "sizing", "bundle": "the --init-from bundle"}
    train = _build(TrainConfig, values[TrainConfig], sources, origin)
    model = _build(IMFConfig, values[IMFConfig], sources, origin)
    return ResolvedConfig(train=train, model=model, sources=sources)


def resume_config(
    checkpoint: Mapping[str, Any],
    *,
    flags: Mapping[str, Any],
    file: Mapping[str, Any] | None = None,
    where: str | Path = "the checkpoint",
    changeable: tuple[str, ...],
) -> ResolvedConfig:
    """The configuration of a run resumed from `checkpoint` (its train_config, model_settings):
    values given on the command line or in a config file may change only the options in
    `changeable`; any other given value that differs from the run's is refused, naming the
    option and both values."""
    file = file or {}
    table = _table()
    train_values = {k: v for k, v in checkpoint["train_config"].items() if k in {f.name for f in option_fields(TrainConfig)}}
    model_values = {k: v for k, v in checkpoint["model_settings"].items() if k in {f.name for f in option_fields(IMFConfig)}}
    sources = dict.fromkeys(table, "checkpoint")
    conflicts = []
    for source, given in (("config", file), ("flag", flags)):  # flags last: they win over the file
        for name, value in given.items():
            cls, f = table[name]
            theirs = (train_values if cls is TrainConfig else model_values).get(name)
            if name in changeable:
                (train_values if cls is TrainConfig else model_values)[name] = value
                sources[name] = source
            elif value != theirs and not (name == "precision" and value == "auto"):  # auto resolved to the run's, checked by train()
                conflicts.append(f"{option_flag(f) if source == 'flag' else name} {value!r} ({source}) conflicts with the run's {name} = {theirs!r}")
    if conflicts:
        allowed = ", ".join(option_flag(table[k][1]) for k in changeable if k in table)
        raise IMFError(f"{where}: a resumed run keeps its configuration (only {allowed} may change): " + "; ".join(conflicts))
    origin = {"flag": "the command line", "config": "the config file", "checkpoint": str(where)}
    return ResolvedConfig(
        train=_build(TrainConfig, train_values, sources, origin),
        model=_build(IMFConfig, model_values, sources, origin),
        sources=sources,
    )


__all__ = ["SECTIONS", "SOURCES", "ConfigError", "ResolvedConfig", "coerce", "read_config_file", "resolve", "resume_config", "sized_defaults", "toml_value"]
