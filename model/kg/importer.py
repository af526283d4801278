"""`imf data import`: a knowledge graph of your own, from CSV or TSV files, as a dataset directory
in the project's format (model.kg.dataset; docs/data-format.md) that `imf train --dataset DIR`
reads.

Reading the input files (triples; optionally entity names and numeric attributes):

- UTF-8 (a byte-order mark at the start is dropped), gzip when the name ends in ``.gz``; blank
  lines are skipped;
- the delimiter is tab, comma or semicolon: whichever splits the first rows into the same number
  of fields most often (ties: the file's suffix, ``.csv`` comma, else tab; then tab, comma,
  semicolon); quoted fields are read as Python's csv module reads them (``"Paris, France"`` is
  one field);
- a first row is a header when at least two of its fields are known column names (``head``,
  ``relation``, ``tail``, ``subject``, ``predicate``, ``object``, ...; ``id``, ``name``,
  ``description``; ``entity``, ``attribute``, ``value``) or it holds the header names given with
  `columns`; its names then say which column is which, and other columns are ignored;
- without a header, the columns are head, relation, tail (or as `columns` lists them), id, name
  [, description], and entity, attribute, value;
- a row with another number of fields, an empty id, an id holding a tab or line break, or an
  attribute value that is not a finite number is a DataError naming the file, line and field.

The triples are then split (`model.kg.split.split_triples`) or, when valid and test files are
given, repaired (`repair_splits`), so that every entity and relation of valid and test occurs in
train and no triple is in two splits; what was moved or dropped is logged and recorded under
``cleaning`` in ``dataset.json``. The dataset is written with `model.kg.builtin.write_dataset`
(plus ``attributes.tsv``, entity <TAB> attribute <TAB> value, for model.features.numeric) into a
temporary folder, loaded back by the strict loader, and only then renamed into place
(model.files.atomic_folder): the output folder appears complete or not at all.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import re
import shlex
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from model.errors import DataError
from model.files import atomic_folder, sha256_file
from model.kg.builtin import RawKG, entity_order, write_dataset, write_lines
from model.kg.checks import check_dataset
from model.kg.dataset import find_file, load_dataset
from model.kg.split import SPLITS, Triple, parse_fractions, repair_splits, split_triples

log = logging.getLogger(__name__)

DELIMITERS = {"\t": "tab", ",": "comma", ";": "semicolon"}
SKIP_COLUMN = frozenset({"-", "_", "skip"})  # in `columns`: a column to ignore
_SAMPLE_LINES = 200  # rows read to choose the delimiter and detect a header
_BREAKS = re.compile(r"[\t\r\n]")


def _norm(name: str) -> str:
    """A column name as compared: 'Entity ID' -> 'entity_id'."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


@dataclass(frozen=True)
class TableKind:
    """One kind of input file: its roles in default column order, how many of them (from the
    first) a row must hold, the header names of each role, and the roles whose values are ids
    (non-empty, no tab or line break: they are written into TSV files)."""

    label: str
    roles: tuple[str, ...]
    required: int
    aliases: dict[str, frozenset[str]]
    id_roles: frozenset[str]

    def role_of(self, name: str) -> str | None:
        key = _norm(name)
        for role, names in self.aliases.items():
            if key in names:
                return role
        return None


TRIPLES = TableKind(
    "triples",
    ("head", "relation", "tail"),
    3,
    {
        "head": frozenset({"head", "h", "subject", "subj", "s", "source", "src", "from", "head_id", "subject_id"}),
        "relation": frozenset({"relation", "r", "rel", "predicate", "pred", "p", "property", "relationship", "edge", "relation_id", "predicate_id"}),
        "tail": frozenset({"tail", "t", "object", "obj", "o", "target", "dst", "to", "tail_id", "object_id"}),
    },
    frozenset({"head", "relation", "tail"}),
)
ENTITIES = TableKind(
    "entities",
    ("id", "name", "description"),
    2,
    {
        "id": frozenset({"id", "entity", "entity_id", "key", "node", "node_id", "uri", "iri"}),
        "name": frozenset({"name", "label", "title", "entity_name"}),
        "description": frozenset({"description", "desc", "text", "comment", "abstract", "definition", "gloss"}),
    },
    frozenset({"id"}),
)
ATTRIBUTES = TableKind(
    "attributes",
    ("entity", "attribute", "value"),
    3,
    {
        "entity": frozenset({"entity", "entity_id", "id", "node", "head", "subject"}),
        "attribute": frozenset({"attribute", "attr", "property", "predicate", "relation", "key", "name"}),
        "value": frozenset({"value", "val", "number", "literal", "object", "amount"}),
    },
    frozenset({"entity", "attribute"}),
)


def _open(path: Path) -> TextIO:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        return opener(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[operator, return-value]
    except FileNotFoundError:
        raise DataError(path, "not found") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc}") from None


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    """The error naming the first line that is not UTF-8 (the text decoder reads ahead in
    chunks, so where it failed is not where the reader was)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        for lineno, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                return DataError(path, f"not valid UTF-8 ({bad.reason} at byte {bad.start} of the line); save the file as UTF-8", lineno)
    return DataError(path, f"not valid UTF-8 ({exc.reason}); save the file as UTF-8")


class TableReader:
    """The rows of one input file, as (line number, values in the order of `kind.roles`; "" for
    an optional role the file lacks). The delimiter, header and column layout are settled when
    it is created (from the first rows); iterating reads the whole file."""

    def __init__(self, path: Path, kind: TableKind, columns: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.kind = kind
        self.columns = [c.strip() for c in columns] if columns else None
        sample = self._sample()
        self.delimiter = self._choose_delimiter(sample)
        first = next(((n, f) for n, f in self._parse(io.StringIO("".join(sample))) if any(x.strip() for x in f)), None)
        if first is None:
            raise DataError(self.path, f"no {kind.label}: the file is empty")
        self.header_line: int | None = None
        self.header: list[str] | None = None
        self.index, self.widths = self._layout(*first)

    # ---------------------------------------------------------------- detection

    def _sample(self) -> list[str]:
        lines: list[str] = []
        with _open(self.path) as fh:
            try:
                for line in fh:
                    lines.append(line)
                    if len(lines) >= _SAMPLE_LINES:
                        break
            except UnicodeDecodeError as exc:
                raise _not_utf8(self.path, exc) from None
            except (OSError, EOFError) as exc:  # a damaged .gz, say
                raise DataError(self.path, f"cannot read: {exc}") from None
        if len(lines) == _SAMPLE_LINES and lines:
            lines.pop()  # may end inside a quoted field that spans lines
        return lines

    def _min_width(self) -> int:
        return len(self.columns) if self.columns else self.kind.required

    def _choose_delimiter(self, sample: list[str]) -> str:
        """The delimiter that splits the most sample rows into the most common width (at least
        the fields a row needs); ties go to the suffix's delimiter, then tab, comma, semicolon."""
        suffixes = [s.lower() for s in self.path.suffixes]
        preferred = "," if ".csv" in suffixes else "\t"
        best: tuple[Any, ...] | None = None
        choice = preferred
        for order, delim in enumerate(DELIMITERS):
            widths = Counter(len(f) for _, f in self._parse(io.StringIO("".join(sample)), delim) if any(x.strip() for x in f))
            width, count = widths.most_common(1)[0] if widths else (0, 0)
            score = (count if width >= self._min_width() else 0, delim == preferred, -order)
            if best is None or score > best:
                best, choice = score, delim
        return choice

    def _parse(self, fh: TextIO, delimiter: str | None = None) -> Iterator[tuple[int, list[str]]]:
        """(line number where the row starts, fields) for every row, blank ones included."""
        reader = csv.reader(fh, delimiter=delimiter or self.delimiter)
        prev = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(self.path, f"cannot parse: {exc}", prev + 1) from None
            except UnicodeDecodeError as exc:
                raise _not_utf8(self.path, exc) from None
            except (OSError, EOFError) as exc:  # a damaged .gz, say
                raise DataError(self.path, f"cannot read: {exc}") from None
            yield prev + 1, fields
            prev = reader.line_num

    def _looks_like_header(self, fields: list[str]) -> bool:
        known = sum(1 for f in fields if self.kind.role_of(f) is not None)
        return known >= min(2, len(fields))

    def _header_roles(self, lineno: int, fields: list[str]) -> dict[str, int]:
        """Role -> column for each header name that is a known column name; DataError when two
        name the same role."""
        index: dict[str, int] = {}
        for i, name in enumerate(fields):
            role = self.kind.role_of(name)
            if role is None:
                continue
            if role in index:
                raise DataError(self.path, f"header names the {role} column twice ({fields[index[role]]!r}, {name!r}); say which with --columns", lineno)
            index[role] = i
        return index

    def _header_index(self, lineno: int, fields: list[str]) -> dict[str, int]:
        """Role -> column from the header's names; DataError unless each role a row needs is
        named exactly once."""
        index = self._header_roles(lineno, fields)
        missing = [r for r in self.kind.roles[: self.kind.required] if r not in index]
        if missing:
            raise DataError(
                self.path,
                f"header line {', '.join(fields)!r} names no {' or '.join(missing)} column; name the columns with --columns "
                f"(e.g. --columns {','.join(self.kind.roles[: self.kind.required])})",
                lineno,
            )
        return index

    def _layout(self, lineno: int, fields: list[str]) -> tuple[dict[str, int], tuple[int, int]]:
        """(role -> column, allowed field counts) from `columns`, a header, or the default order."""
        kind, columns = self.kind, self.columns
        role_form = columns is not None and all(c in SKIP_COLUMN or kind.role_of(c) is not None for c in columns)
        norm_fields = [_norm(f) for f in fields]
        if columns is not None and not role_form:
            # Header names of the roles, in role order: the first row must be that header.
            if not kind.required <= len(columns) <= len(kind.roles):
                raise ValueError(f"--columns {','.join(columns)}: name the {', '.join(kind.roles[: kind.required])} columns")
            missing = [c for c in columns if _norm(c) not in norm_fields]
            if missing:
                raise DataError(
                    self.path,
                    f"--columns names {', '.join(repr(c) for c in missing)}, which the first line ({', '.join(fields)}) does not hold: "
                    f"give the header's names of the {', '.join(kind.roles[: len(columns)])} columns, or their roles in file order",
                    lineno,
                )
            self.header_line, self.header = lineno, fields
            return {r: norm_fields.index(_norm(c)) for r, c in zip(kind.roles, columns)}, (len(fields), len(fields))
        if columns is not None:
            # Roles in file order (e.g. head,tail,relation).
            index: dict[str, int] = {}
            for i, c in enumerate(columns):
                if c in SKIP_COLUMN:
                    continue
                role = kind.role_of(c)
                assert role is not None
                if role in index:
                    raise ValueError(f"--columns {','.join(columns)}: the {role} column is given twice")
                index[role] = i
            missing = [r for r in kind.roles[: kind.required] if r not in index]
            if missing:
                raise ValueError(f"--columns {','.join(columns)}: no {' or '.join(missing)} column")
            if self._looks_like_header(fields):
                # The header may name only some columns; those it names must agree.
                header_roles = self._header_roles(lineno, fields)
                if any(index.get(r) != i for r, i in header_roles.items()):
                    raise DataError(
                        self.path,
                        f"--columns {','.join(columns)} contradicts the header line ({', '.join(fields)}); "
                        "drop --columns (the header says which column is which) or fix the header",
                        lineno,
                    )
                self.header_line, self.header = lineno, fields
            return index, (len(columns), len(columns))
        if self._looks_like_header(fields):
            index = self._header_index(lineno, fields)
            self.header_line, self.header = lineno, fields
            return index, (len(fields), len(fields))
        return {r: i for i, r in enumerate(kind.roles)}, (kind.required, len(kind.roles))

    def describe(self) -> str:
        """How the file was read, for the log and the report: 'comma-separated, header line
        skipped, columns head, tail, relation'."""
        order = ", ".join(r for r, _ in sorted(self.index.items(), key=lambda x: x[1]))
        header = "header line skipped" if self.header_line is not None else "no header"
        return f"{DELIMITERS[self.delimiter]}-separated, {header}, columns {order}"

    # ---------------------------------------------------------------- rows

    def __iter__(self) -> Iterator[tuple[int, tuple[str, ...]]]:
        lo, hi = self.widths
        expect = str(lo) if lo == hi else f"{lo} to {hi}"
        names = ", ".join(r for r, _ in sorted(self.index.items(), key=lambda x: x[1]))
        with _open(self.path) as fh:
            for lineno, fields in self._parse(fh):
                if lineno == self.header_line or not any(f.strip() for f in fields):
                    continue
                if not lo <= len(fields) <= hi:
                    raise DataError(
                        self.path,
                        f"expected {expect} {DELIMITERS[self.delimiter]}-separated fields ({names}), found {len(fields)}",
                        lineno,
                    )
                values = []
                for role in self.kind.roles:
                    i = self.index.get(role)
                    value = fields[i].strip() if i is not None and i < len(fields) else ""
                    if role in self.kind.id_roles:
                        if not value:
                            raise DataError(self.path, f"field {role!r} is empty", lineno)
                        if _BREAKS.search(value):
                            raise DataError(self.path, f"field {role!r} holds a tab or line break ({value!r}), which an id cannot", lineno)
                    values.append(value)
                yield lineno, tuple(values)


# -------------------------------------------------------------------------------------------
# The import
# -------------------------------------------------------------------------------------------

# Why each count of a cleaning report moved or dropped triples (model.kg.split's keys, and the
# importer's own), for the log and the summary.
_REASONS = {
    "duplicates_dropped": "repeated triples dropped",
    "kept_in_train_for_coverage": "triples kept in train so that every entity and relation occurs there",
    "valid_short": "fewer valid triples than the split asked for: the others are needed in train",
    "test_short": "fewer test triples than the split asked for: the others are needed in train",
    "valid_in_test_dropped": "valid triples dropped: also in test",
    "entities_not_in_graph_skipped": "rows of the entities file skipped: the entity occurs in no triple",
    "attribute_rows_not_in_graph_skipped": "rows of the attributes file skipped: the entity occurs in no triple",
}
for _split in SPLITS:
    _REASONS[f"{_split}_duplicates_dropped"] = f"repeated triples dropped from {_split}"
    _REASONS[f"{_split}_unseen_in_train_dropped"] = f"{_split} triples dropped: an entity or relation of theirs is not in train"
    _REASONS[f"{_split}_in_train_dropped"] = f"{_split} triples dropped: also in train"
# Counts that are expected, not a loss: logged at INFO, the others at WARNING.
_EXPECTED = {"kept_in_train_for_coverage"}


def explain_cleaning(cleaning: dict[str, int]) -> list[str]:
    """One line per non-zero count of a cleaning report: '3 repeated triples dropped'."""
    return [f"{n:,} {_singular(_REASONS.get(key, key.replace('_', ' ')), n)}" for key, n in cleaning.items() if n]


def _singular(reason: str, n: int) -> str:
    """'repeated triples dropped' -> 'repeated triple dropped' for a count of one."""
    return reason.replace("triples", "triple", 1).replace("rows", "row", 1) if n == 1 else reason


def _log_cleaning(cleaning: dict[str, int]) -> None:
    """Log each non-zero count with its reason: a loss as a warning, coverage as information."""
    for key, n in cleaning.items():
        if n:
            log.log(logging.INFO if key in _EXPECTED else logging.WARNING, "%s", explain_cleaning({key: n})[0])


@dataclass
class ImportReport:
    """What `import_graph` wrote and did, for the caller and the command's summary."""

    out: Path
    name: str
    counts: dict[str, int]
    cleaning: dict[str, int]
    split: dict[str, Any] | None  # {"fractions", "seed"} when split here; None: splits given
    inputs: dict[str, str]  # "triples" / "valid" / ... -> "file: how it was read"
    named_entities: int = 0
    attribute_values: int = 0
    attribute_names: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        c = self.counts
        lines = [
            (
                f"imported {self.name!r} into {self.out}: {c['entities']:,} entities, {c['relations']:,} relations, "
                f"{c['train']:,} / {c['valid']:,} / {c['test']:,} triples (train / valid / test)"
            ),
        ]
        lines += [f"  read {key} {how}" for key, how in self.inputs.items()]
        if self.split is not None:
            lines.append(f"  split {','.join(f'{x:g}' for x in self.split['fractions'])} with seed {self.split['seed']}")
        else:
            lines.append("  splits as given, repaired")
        lines += [f"  {line}" for line in explain_cleaning(self.cleaning)]
        if "entities" in self.inputs:
            lines.append(f"  names for {self.named_entities:,} of {c['entities']:,} entities (the others show their id)")
        if self.attribute_values:
            lines.append(f"  attributes.tsv: {self.attribute_values:,} values of {self.attribute_names:,} attributes")
        return lines

    def next_commands(self) -> list[str]:
        out = shlex.quote(str(self.out))
        return [f"imf data check {out}", f"imf train --dataset {out} --out {shlex.quote(str(Path('artifacts') / self.name))}"]


def _is_dataset_dir(path: Path) -> bool:
    return (path / "dataset.json").is_file() or find_file(path, "train.tsv") is not None


def _prepare_target(out: Path, overwrite: bool, inputs: list[Path]) -> None:
    """Refuse an output folder that exists (unless `overwrite`), that is not a dataset folder,
    or that holds an input (replacing it whole would delete that input)."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise DataError(out, "exists and is not a folder")
        if not overwrite:
            raise DataError(out, "already exists: pass --overwrite to replace it (its features/ are removed too)")
        if any(out.iterdir()) and not _is_dataset_dir(out):
            raise DataError(out, "exists and is not a dataset folder (no dataset.json or train.tsv): not replacing it")
        root = out.resolve()
        for p in inputs:
            if root in p.resolve().parents:
                raise DataError(p, f"is inside the output folder {out}, which the import replaces whole: write the dataset elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)


def _read_triples(path: Path, columns: Sequence[str] | None, inputs: dict[str, str], key: str) -> list[Triple]:
    table = TableReader(path, TRIPLES, columns)
    triples: list[Triple] = [(h, r, t) for _, (h, r, t) in table]
    if not triples:
        raise DataError(path, "no triples")
    inputs[key] = f"{path.name}: {len(triples):,} triples, {table.describe()}"
    log.info("read %s: %d triples (%s)", path, len(triples), table.describe())
    return triples


def _read_entities(path: Path, inputs: dict[str, str]) -> dict[str, tuple[str, str]]:
    """id -> (name, description); a repeated id is a DataError naming both lines."""
    table = TableReader(path, ENTITIES)
    out: dict[str, tuple[str, str]] = {}
    first: dict[str, int] = {}
    for lineno, (key, name, desc) in table:
        if key in first:
            raise DataError(path, f"duplicate entity id {key!r} (first on line {first[key]})", lineno)
        first[key] = lineno
        out[key] = (name, desc)
    inputs["entities"] = f"{path.name}: {len(out):,} entities, {table.describe()}"
    log.info("read %s: %d entities (%s)", path, len(out), table.describe())
    return out


def _read_attributes(path: Path, inputs: dict[str, str]) -> list[tuple[str, str, str]]:
    """(entity, attribute, value text) rows; a value that is not a finite number is a DataError."""
    table = TableReader(path, ATTRIBUTES)
    rows: list[tuple[str, str, str]] = []
    for lineno, (key, attr, text) in table:
        try:
            x = float(text)
        except ValueError:
            hint = " (write decimals with a point: 1.5)" if re.fullmatch(r"[-+]?\d+,\d+", text) else ""
            raise DataError(path, f"field 'value': not a number: {text!r}{hint}", lineno) from None
        if not math.isfinite(x):
            raise DataError(path, f"field 'value': {text!r} is not a finite number", lineno)
        rows.append((key, attr, text))
    if not rows:
        raise DataError(path, "no attribute values")
    inputs["attributes"] = f"{path.name}: {len(rows):,} values, {table.describe()}"
    log.info("read %s: %d attribute values (%s)", path, len(rows), table.describe())
    return rows


def import_graph(
    triples: Path,
    out: Path,
    *,
    valid: Path | None = None,
    test: Path | None = None,
    entities: Path | None = None,
    attributes: Path | None = None,
    name: str | None = None,
    columns: Sequence[str] | str | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    overwrite: bool = False,
) -> ImportReport:
    """Import a graph from CSV / TSV files into the dataset directory `out` (see the module
    docstring for how the files are read).

    triples: every triple, split here with `fractions` and `seed`; or, with `valid` and `test`,
        the training triples (the three are then repaired, not re-split).
    entities: id, name[, description] rows; attributes: entity, attribute, value rows. Rows of
        entities that occur in no triple are skipped and counted.
    columns: the triple files' columns, as roles in file order ("head,tail,relation") or as the
        header's names of the head, relation and tail columns.
    overwrite: replace an existing dataset folder `out` (otherwise it is an error).

    Raises DataError (file and line) for bad input, ValueError for contradictory options.
    """
    triples, out = Path(triples), Path(out)
    if (valid is None) != (test is None):
        raise ValueError("give both --valid and --test, or neither (then --triples is split)")
    if isinstance(columns, str):
        columns = columns.split(",")
    fractions = parse_fractions(",".join(str(x) for x in fractions))
    given = [p for p in (triples, valid, test, entities, attributes) if p is not None]
    _prepare_target(out, overwrite, [Path(p) for p in given])
    name = name or out.resolve().name

    inputs: dict[str, str] = {}
    split_info: dict[str, Any] | None
    if valid is None or test is None:
        everything = _read_triples(triples, columns, inputs, "triples")
        splits, cleaning = split_triples(everything, fractions, seed=seed)
        split_info = {"fractions": list(fractions), "seed": seed}
        empty = [s for s in SPLITS if not splits[s]]
        if empty:
            unique = sum(len(v) for v in splits.values())
            raise DataError(
                triples,
                f"cannot split {unique:,} distinct triples {','.join(f'{x:g}' for x in fractions)}: {' and '.join(empty)} would be empty "
                f"({cleaning['kept_in_train_for_coverage']:,} triples must stay in train so that every entity and relation occurs there); "
                "every split needs a triple: add triples, change --split, or give --valid and --test",
            )
    else:
        given_splits = {
            "train": _read_triples(triples, columns, inputs, "train"),
            "valid": _read_triples(Path(valid), columns, inputs, "valid"),
            "test": _read_triples(Path(test), columns, inputs, "test"),
        }
        splits, cleaning = repair_splits(given_splits)
        split_info = None
        for s, path in (("valid", Path(valid)), ("test", Path(test))):
            if not splits[s]:
                why = "; ".join(explain_cleaning({k: v for k, v in cleaning.items() if k.startswith(s)}))
                raise DataError(path, f"no {s} triple is left after cleaning ({why}): every split needs one")
    _log_cleaning(cleaning)

    raw = RawKG(
        name=name,
        description=f"imported by `imf data import` from {triples.name}",
        splits=splits,
        entity_names={},
        entity_descriptions={},
        relation_names={},
        default_modalities=None,
        sources=[f"{p.name} (sha256 {sha256_file(Path(p))[:16]})" for p in given],
        cleaning=dict(cleaning),
        extra={"import": {"split": split_info or "given", "columns": list(columns) if columns else None}},
    )
    graph_entities = set(entity_order(raw))
    named = 0
    if entities is not None:
        table = _read_entities(Path(entities), inputs)
        for key, (ent_name, desc) in table.items():
            if key in graph_entities:
                raw.entity_names[key] = ent_name
                raw.entity_descriptions[key] = desc
                named += bool(ent_name)
        raw.cleaning["entities_not_in_graph_skipped"] = sum(1 for k in table if k not in graph_entities)
    attribute_lines: list[str] = []
    attribute_names: set[str] = set()
    if attributes is not None:
        rows = _read_attributes(Path(attributes), inputs)
        kept = [r for r in rows if r[0] in graph_entities]
        raw.cleaning["attribute_rows_not_in_graph_skipped"] = len(rows) - len(kept)
        attribute_lines = [f"{e}\t{a}\t{v}" for e, a, v in kept]
        attribute_names = {a for _, a, _ in kept}
        if not kept:
            log.warning("%s: no row names an entity of the graph; attributes.tsv not written", attributes)
    _log_cleaning({k: raw.cleaning.get(k, 0) for k in ("entities_not_in_graph_skipped", "attribute_rows_not_in_graph_skipped")})

    with atomic_folder(out) as tmp:
        meta = write_dataset(raw, tmp, clean=False)
        if attribute_lines:
            write_lines(tmp / "attributes.tsv", attribute_lines)
        # The strict loader reads it back before the folder appears: a bug here, not a user.
        ds = load_dataset(tmp, with_features=False)
    ds.root = out
    report = ImportReport(
        out=out,
        name=name,
        counts=meta["counts"],
        cleaning=raw.cleaning,
        split=split_info,
        inputs=inputs,
        named_entities=named,
        attribute_values=len(attribute_lines),
        attribute_names=len(attribute_names),
        warnings=check_dataset(ds),
    )
    log.info("wrote %s: %s", out, meta["counts"])
    return report
