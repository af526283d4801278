"""The exception tree of the `model` package.

Every error a user can cause (bad data, a bad bundle, an unknown or ambiguous name) is an
`IMFError` with a message that names the file, line, field or parameter at fault. Callers (the
CLI, the service) catch `IMFError` and print or map it; anything else is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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


MAX_CANDIDATES = 20  # candidates an AmbiguousNameError carries (the most connected); it counts them all


@dataclass(frozen=True)
class NameCandidate:
    """One entity (or relation) an ambiguous name may mean: its id, its name, its description
    ("" where the vocabulary has none)."""

    id: str
    name: str
    description: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "description": self.description}


class AmbiguousNameError(IMFError, LookupError):
    """An exact name shared by several entities (or relations): which one is meant is the
    user's to say, by id. Resolving it silently to the most connected one answered confidently
    about the wrong thing whenever the user meant another: "Chicago" was always the city, never
    the 2002 film or the band.

    `candidates`: at most MAX_CANDIDATES of them, most connected first; `total`: how many share
    the name.
    """

    def __init__(self, kind: str, name: str, candidates: Sequence[NameCandidate], *, total: int | None = None) -> None:
        self.kind = kind
        self.name = name
        self.total = total if total is not None else len(candidates)
        self.candidates = list(candidates[:MAX_CANDIDATES])
        shown = ", ".join(f"{c.id} ({shorten(c.description) or c.name})" for c in self.candidates[:5])
        more = f" and {self.total - 5} more" if self.total > 5 else ""
        plural = "entities" if kind == "entity" else f"{kind}s"
        super().__init__(f"{name!r} is ambiguous: {self.total} {plural} have this name; give an id instead: {shown}{more}")


def shorten(text: str, width: int = 60) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"
