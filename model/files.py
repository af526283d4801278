"""File helpers every layer shares: one codec for the project's tab-separated vocabularies,
atomic writes of files and of whole folders, and the chunked sha256 of a file.

TSV fields. A name may hold any character, including tabs, newlines, and the characters that
`str.splitlines()` also treats as line breaks (U+2028, U+2029, U+0085, \\x1c-\\x1e, \\x0b, \\x0c). Fields
are written with four backslash escapes (``\\\\`` ``\\t`` ``\\n`` ``\\r``) and records are separated by
``\\n`` alone, so `decode_field(encode_field(s)) == s` for every string and a record never spans
two lines. Readers split records on ``\\n`` only (never `splitlines`).

Atomic writes. `atomic_write` writes each file under a hidden temporary name beside its target,
fsyncs it, renames them all into place once every one is complete and fsyncs their folders; a
failure leaves the old files, and once it returns the new ones survive a power loss (a rename
without the fsyncs may reach the disk before the data, leaving an empty or truncated file).
`remove_stale_temporaries` clears what a crash in the middle left behind.
`atomic_folder` does the same for a folder (a bundle): it is built under a temporary name and
swapped in whole, the old one moved aside first, so a failure leaves one intact copy.
"""

from __future__ import annotations

import errno
import gc
import glob
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a block that creates millions of small objects
    and no cycles (a million-entity vocabulary: 1M lists of fields): the collector would scan the
    growing heap again and again (5x the time of the parse itself). Restored after, as it was."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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
            fsync_file(tmp)  # the data on disk before the rename can make it visible
        for tmp, path in tmps:
            os.replace(tmp, path)
        for folder in dict.fromkeys(path.parent for _, path in tmps):
            fsync_dir(folder)  # the renames themselves on disk
    finally:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk (a writer that closed it may leave it in the page
    cache, lost on a power failure)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a created, renamed or removed name) to the disk. Filesystems
    that cannot sync a directory (EINVAL, e.g. some network mounts) are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform without directory handles (Windows): nothing to sync
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries `atomic_write` left beside `path` (``.NAME.tmp-PID``) when a
    process died between writing and renaming; returns what was removed. Call it where no
    writer of `path` can be at work (at start, or under the lock its writers take)."""
    removed = []
    for tmp in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.tmp-*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Build a folder that replaces `out` whole: yields an empty temporary sibling to fill; when
    the block ends without an error it becomes `out` (an existing `out` is moved aside first and
    removed after, so at every moment one complete copy exists); on an error it is removed and
    `out` is untouched. The folder gets the permissions of a normally created one (mkdtemp's
    are 0700): readable by another user, a service in a container say, as the umask allows."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _share(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _share(folder: Path) -> None:
    """The umask's permissions for `folder` and the files directly in it."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    return sha256_files([path])


def sha256_files(paths: list[Path], root: Path | None = None) -> str:
    """One sha256 over several files' bytes, in the order given. With `root`, each file's path
    relative to it (and a separator) is hashed before its bytes, so renaming a file changes the
    digest too (a dataset's fingerprint)."""
    h = hashlib.sha256()
    for p in paths:
        if root is not None:
            h.update(str(p.relative_to(root)).encode())
            h.update(b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if root is not None:
            h.update(b"\0")
    return h.hexdigest()


__all__ = [
    "atomic_folder", "atomic_write", "decode_field", "encode_field", "encode_record", "fsync_dir", "fsync_file", "records",
    "remove_stale_temporaries", "sha256_file", "sha256_files",
]
