"""The entity tables the engine serves: their storage type, and a saved copy beside the index.

Storage type (`resolve_dtype`, IMF_TABLE_DTYPE). Every branch table C_b is (N, d); at a million
entities and d = 128 the four float32 tables are 2 GB, most of the server's memory. float16
halves that: queries, products and probabilities stay float32 / float64 (rows are read as
float32: the candidates' rows at a time, or a chunk of entities at a time when every entity is
scored), so what changes is only each stored number, rounded to 11 significant bits (relative
error <= 2^-11). `auto` keeps float32 up to EXHAUSTIVE_MAX_ENTITIES entities (where answers
are exact) and takes float16 above, where retrieval and the softmax normaliser are
approximations anyway (docs/benchmarks.md measures what float16 changes at 1M).

Saved copy (`save` / `load`). Computing the tables takes the bilinear fusion of every entity:
10 s at a million entities on two cores, most of a start. A server that uses an index saves the
tables it computed beside it (index/tables-<dtype>.bin + .json), authenticated as the index is
(service.index: sha256 and an HMAC under this installation's key, tied to the model
fingerprint), and a later start reads them back instead (about 1 s for 1 GB).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from service.index import EXHAUSTIVE_MAX_ENTITIES, load_authenticated, read_meta, save_authenticated

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16}
FORMAT = "imf-entity-tables-v1"  # what the saved bytes are: the tables in branch order, row-major


def resolve_dtype(name: str, num_entities: int) -> torch.dtype:
    """'auto' -> float32 up to EXHAUSTIVE_MAX_ENTITIES entities, float16 above; else the named type."""
    if name == "auto":
        return torch.float32 if num_entities <= EXHAUSTIVE_MAX_ENTITIES else torch.float16
    if name not in DTYPES:
        raise ValueError(f"table type must be auto, float32 or float16, not {name!r}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """"float16" for torch.float16: how logs, file names and cache keys name a table type."""
    return str(dtype).removeprefix("torch.")


def _names(dtype: torch.dtype) -> tuple[str, str, str]:
    label = dtype_name(dtype)
    return label, f"tables-{label}.bin", f"tables-{label}.json"


def _meta(fingerprint: str, branches: list[str], shape: tuple[int, int], dtype: torch.dtype) -> dict:
    return {"format": FORMAT, "model_fingerprint": fingerprint, "branches": list(branches), "shape": list(shape), "dtype": _names(dtype)[0]}


def save(folder: Path, fingerprint: str, tables: dict[str, Tensor]) -> None:
    """Write every branch's (N, d) table under folder/, authenticated (OSError when it cannot be)."""
    branches = list(tables)
    first = tables[branches[0]]
    label, data_name, meta_name = _names(first.dtype)
    chunks = [t.contiguous().view(-1).view(torch.uint8).numpy() for t in tables.values()]
    save_authenticated(folder, data_name, meta_name, chunks, _meta(fingerprint, branches, tuple(first.shape), first.dtype))
    log.info("saved the %s entity tables beside the index (%d MiB)", label, sum(c.nbytes for c in chunks) // 2**20)


def find(folder: Path, fingerprint: str, branches: list[str], shape: tuple[int, int], dtype: torch.dtype) -> dict | None:
    """The sidecar of the tables of this model, branches, shape (N, d) and type saved under
    folder/, or None (logged when the saved ones belong to another model or format). Only the
    sidecar is read: `load` checks the bytes."""
    _, data_name, meta_name = _names(dtype)
    meta = read_meta(folder / meta_name)
    if meta is None or not (folder / data_name).is_file():
        return None
    if {k: meta.get(k) for k in ("format", "model_fingerprint", "branches", "shape", "dtype")} != _meta(fingerprint, branches, shape, dtype):
        log.info("saved entity tables belong to another model or format; computing them")
        return None
    return meta


def load(folder: Path, meta: dict) -> dict[str, Tensor] | None:
    """The tables a sidecar from `find` describes, each (N, d), sharing the bytes read; None
    (logged) when the bytes fail their checks."""
    dtype = DTYPES[meta["dtype"]]
    label, data_name, _ = _names(dtype)
    data = load_authenticated(folder / data_name, meta, "tables")
    if data is None:
        return None
    branches, (n, d) = meta["branches"], meta["shape"]
    each = n * d * torch.empty((), dtype=dtype).element_size()
    if len(data) != each * len(branches):
        log.warning("%s: %d bytes where %d were expected; computing the tables", folder / data_name, len(data), each * len(branches))
        return None
    flat = torch.frombuffer(data, dtype=torch.uint8)  # shares the checked bytes: no copy
    tables = {b: flat[i * each:(i + 1) * each].view(dtype).view(n, d) for i, b in enumerate(branches)}
    log.info("loaded the saved %s entity tables (%d MiB)", label, len(data) // 2**20)
    return tables


__all__ = ["DTYPES", "dtype_name", "find", "load", "resolve_dtype", "save"]
