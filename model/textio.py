"""One codec for the project's tab-separated vocabularies, and one atomic file writer.

TSV fields. A name may hold any character, including tabs, newlines, and the characters that
`str.splitlines()` also treats as line breaks (U+2028, U+2029, U+0085, \\x1c-\\x1e, \\x0b, \\x0c). Fields
are written with four backslash escapes (``\\\\`` ``\\t`` ``\\n`` ``\\r``) and records are separated by
``\\n`` alone, so `decode_field(encode_field(s)) == s` for every string and a record never spans
two lines. Readers split records on ``\\n`` only (never `splitlines`).

Atomic writes. `atomic_write` writes each file under a hidden temporary name beside its target
and renames them all into place once every one is complete; a failure leaves the old files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}
_ENCODE_RE = re.compile(r"[\\\t\n\r]")
_DECODE_RE = re.compile(r"\\(.)", re.DOTALL)


def encode_field(text: str) -> str:
    """`text` as one TSV field: no raw tab, newline or carriage return remains."""
    return _ENCODE_RE.sub(lambda m: _ESCAPES[m.group()], text)


def decode_field(field: str) -> str:
    """Inverse of `encode_field`. An unknown escape (``\\x``) is kept as written."""
    return _DECODE_RE.sub(lambda m: _UNESCAPES.get(m.group(1), m.group()), field)


def encode_record(fields: list[str]) -> str:
    """One record: encoded fields joined by tabs, ending in a newline."""
    return "\t".join(encode_field(f) for f in fields) + "\n"


def records(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each record of `text`, split on ``\\n`` only; a trailing ``\\r``
    (a file edited on Windows) is dropped and the final empty line after the last newline is
    not a record."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for lineno, line in enumerate(lines, start=1):
        yield lineno, line[:-1] if line.endswith("\r") else line


def atomic_write(*files: tuple[Path, Callable[[Path], None]]) -> None:
    """For each (path, writer): call `writer(tmp)` on a hidden temporary name beside `path`; once
    every file is complete, rename them into place (in the order given).

    Temporary names start with a dot and end in ``.tmp-PID``, so no loader's glob (e.g.
    ``features/*.npy``) sees a half-written file; they are removed if a writer fails, leaving
    the old files untouched.
    """
    tmps = [(path.with_name(f".{path.name}.tmp-{os.getpid()}"), path) for path, _ in files]
    try:
        for (tmp, _), (_, writer) in zip(tmps, files):
            writer(tmp)
        for tmp, path in tmps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)


__all__ = ["atomic_write", "decode_field", "encode_field", "encode_record", "records"]
