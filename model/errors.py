"""The exception tree of the `model` package.

Every error a user can cause (bad data, a bad bundle, an unknown name) is an `IMFError` with a
message that names the file, line, field or parameter at fault. Callers (the CLI, the service)
catch `IMFError` and print or map it; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from model.kg.names import close_matches


class IMFError(Exception):
    """Base class of every user-facing error raised by the `model` package."""


class DataError(IMFError):
    """A dataset file is malformed: wrong column count, unknown entity, NaN feature, ...

    The message always starts with ``path[:line]`` so a user can jump straight to the problem.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.detail = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class BundleError(IMFError):
    """A checkpoint bundle is missing, corrupt, truncated, or does not match its manifest."""


class TrainingDiverged(IMFError):
    """The training loss became NaN or infinite; the message names the epoch, step and remedies."""


class UnknownNameError(IMFError, KeyError):
    """A name (dataset, modality, entity, relation) is not known; carries close-match suggestions."""

    def __init__(
        self, kind: str, name: str, known: Iterable[str], *, suggestions: list[str] | None = None, list_known: bool = False
    ) -> None:
        known = list(known)
        self.kind = kind
        self.name = name
        self.suggestions = suggestions if suggestions is not None else close_matches(name, known)
        hint = f"; did you mean {', '.join(repr(s) for s in self.suggestions)}?" if self.suggestions else ""
        if list_known:
            hint += f" (known: {', '.join(sorted(known)) or 'none'})"
        super().__init__(f"unknown {kind} {name!r}{hint}")

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0])


