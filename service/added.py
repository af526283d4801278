"""The added-entity registry: entities the model never saw in training, served without
retraining (POST /entities).

Their rows (model.bundle.feature_map, from the bundle's feature map) are appended to every
branch table in a new `View`, swapped in whole, so a request that started on one view finishes
on it. The FAISS index keeps the bundle's N entities; every added entity is a candidate of
every query and scored exactly. The view's `generation` is part of every cache key: a digest
of every added entity's content (id, name, description, numbers, text vector, model), so it
changes with every addition and with any change of a record under an id already served, and no
cached answer that lacks a new entity, or was computed with another entity under its id, is
served (by this replica or any other sharing the cache).

The store is the truth: a record whose id is served with different content (the store was reset
and the id reused) replaces the served one in place, so this replica serves what the store and
every fresh replica serve.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import threading
import uuid
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from model.bundle.format import Bundle
from model.errors import NameCandidate
from model.features.text import encode_texts, entity_text
from model.kg.names import close_matches
from model.kg.vocab import name_key
from model.network.serving import column_tables
from service.errors import InvalidRequest, Unsupported
from service.index import EXHAUSTIVE_MAX_ENTITIES

log = logging.getLogger(__name__)

NO_NUMERIC_STATISTICS = (
    "this bundle takes no numeric attributes for new entities: its feature map has no numeric statistics. "
    "To accept them, run `imf bundle extras BUNDLE --numeric-source FILE` (FILE: the entity<TAB>attribute<TAB>value "
    "file the numeric features were built from) and restart the server"
)


@dataclass(frozen=True)
class View:
    """What the engine scores against: the entity tables of every branch, the bundle's N rows
    followed by the M added entities' rows, and the added entities' vocabulary."""

    tables: dict[str, Tensor]  # (N + M, d) each
    added_ids: tuple[str, ...] = ()
    added_names: tuple[str, ...] = ()
    added_descriptions: tuple[str, ...] = ()
    generation: str = "0"  # digest of the added entities' contents in order: changes with every addition or change (cache keys carry it)
    added_digests: tuple[str, ...] = ()  # record_digest of each added entity, to see a changed record


    @property
    def size(self) -> int:
        return len(next(iter(self.tables.values()))) if self.tables else 0

    @cached_property
    def columns(self) -> dict[str, Tensor]:
        """The tables as (d, N + M) columns, what exhaustive scoring reads: contiguous copies
        up to EXHAUSTIVE_MAX_ENTITIES entities (a (B, d) x (d, N) product reads them about 3x
        faster than (N, d) rows, docs/benchmarks.md section 5; model.network.serving.
        column_tables), transposed views of the rows above (an index serves those: no copy is
        kept). Built once per view."""
        if self.size <= EXHAUSTIVE_MAX_ENTITIES:
            return column_tables(self.tables)
        return {b: t.T for b, t in self.tables.items()}


CONTENT = ("id", "name", "description", "numeric", "text_vector", "model")  # what an added entity is


def record_digest(record: dict) -> str:
    """A digest of what a record serves (CONTENT; not its place in the store, `seq`): two records
    with the same digest give the same rows and the same answers."""
    content = {k: record.get(k) for k in CONTENT}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class AddedEntities:
    """The current `View` and the lookups of added entities by id and name; thread-safe (one
    writer at a time, readers take the view they started with)."""

    def __init__(self, bundle: Bundle, base_tables: dict[str, Tensor]) -> None:
        """base_tables: every branch's (N, d) table of the bundle's entities."""
        self.bundle = bundle
        self.model = bundle.model
        self.branches = self.model.branches
        self.base_tables = base_tables
        self.num_base = bundle.num_entities  # the bundle's entities come first; added ones from here
        self.view = self._warm(View(base_tables))
        self._add_lock = threading.Lock()  # one writer of the view at a time
        self._by_id: dict[str, int] = {}
        self._by_name: dict[str, list[int]] = {}  # name_key -> every added entity of that name, in order added

    @property
    def ids(self) -> tuple[str, ...]:
        return self.view.added_ids

    def lookup(self, key: str) -> int | None:
        """The entity index of an added entity by id, or by an exact (case-insensitive) name
        only one added entity has; None else (none, several, or its row not in the current view
        yet). Resolving requests goes through lookup_id and named (service.names), which also
        count the bundle's entities of that name."""
        hit = self.lookup_id(key)
        if hit is not None:
            return hit
        named = self.named(key)
        return named[0] if len(named) == 1 else None

    def lookup_id(self, key: str) -> int | None:
        """The entity index of the added entity with this id, None if there is none (or its row
        is not in the current view yet)."""
        hit = self._by_id.get(key)
        return hit if hit is not None and hit < self.view.size else None

    def named(self, name: str) -> list[int]:
        """Every added entity whose name is exactly `name` (model.kg.vocab.name_key: case and
        surrounding blanks ignored) and whose row is in the current view, in order added."""
        size = self.view.size
        return [e for e in self._by_name.get(name_key(name), ()) if e < size]

    def candidates(self, indices: list[int]) -> list[NameCandidate]:
        """Id, name and description of these added entities (what an ambiguous name lists)."""
        v, base = self.view, self.num_base  # the view only grows: an index found earlier is in it
        return [NameCandidate(v.added_ids[e - base], v.added_names[e - base], v.added_descriptions[e - base]) for e in indices]

    def has_id(self, key: str) -> bool:
        return key in self._by_id

    def info(self, e: int) -> dict[str, str]:
        """{"entity", "name"} of added entity e (an index >= num_base)."""
        v = self.view
        return {"entity": v.added_ids[e - self.num_base], "name": v.added_names[e - self.num_base]}

    def description(self, e: int) -> str:
        return self.view.added_descriptions[e - self.num_base]

    def matching(self, text: str) -> list[int]:
        """Added entities whose name or id contains `text` (case-insensitive), in order added."""
        v, low = self.view, text.strip().lower()
        return [self.num_base + i for i, (e, n) in enumerate(zip(v.added_ids, v.added_names)) if low and (low in n.lower() or low in e.lower())]

    def set_added(self, ids: list[str], names: list[str], descriptions: list[str], rows: dict[str, Tensor], *, digests: list[str]) -> None:
        """Serve the bundle's entities plus these (rows[b]: (M, d) per branch; digests: each
        one's `record_digest`), atomically. An entity already served must keep its position
        (callers append or replace in place, never reorder: a request may resolve an id to a
        row on one view and score it on the next)."""
        if len(digests) != len(ids):
            raise ValueError(f"{len(ids)} added entities but {len(digests)} digests")
        generation = hashlib.sha256("\n".join(digests).encode()).hexdigest()[:12] if ids else "0"
        tables = {b: torch.cat([t, rows[b].to(t.dtype)]).contiguous() if len(ids) else t for b, t in self.base_tables.items()}
        by_name: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            by_name.setdefault(name_key(n), []).append(self.num_base + i)
        # Lookups first, the view last: a lookup that finds a row the old view lacks is refused
        # by `lookup`'s bound check until the view is swapped in.
        self._by_id = {e: self.num_base + i for i, e in enumerate(ids)}
        self._by_name = by_name
        self.view = self._warm(View(tables, tuple(ids), tuple(names), tuple(descriptions), generation, tuple(digests)))

    @staticmethod
    def _warm(view: View) -> View:
        """The view with its column tables built, so that no request pays for them."""
        view.columns  # noqa: B018
        return view

    def check_new_entity(self, name: str, description: str, numeric: dict[str, float], entity_id: str | None, *, max_text: int) -> None:
        """Validate a new entity before any work: InvalidRequest naming the field."""
        fmap = self.bundle.feature_map
        if fmap is None:
            raise Unsupported("this bundle has no feature map for new entities (run: imf bundle extras BUNDLE)")
        if "text" not in self.model.modalities:
            raise InvalidRequest("this model has no text branch: new entities need one", field="description")
        if not name.strip():
            raise InvalidRequest("must not be empty or blank", field="name")
        if len(name) > max_text:
            raise InvalidRequest(f"may have at most {max_text} characters", field="name")
        if len(name) + len(description) > max_text:
            raise InvalidRequest(f"name and description together may have at most {max_text} characters", field="description")
        if entity_id is not None:
            if not entity_id.strip() or any(c in entity_id for c in "\t\n\r"):
                raise InvalidRequest("must not be blank or contain tabs or newlines", field="id")
            if self.bundle.vocab.has_entity_id(entity_id):
                raise InvalidRequest(f"entity id {entity_id!r} is an entity of the model", field="id")
            # An id already added is checked against the store by the caller (same_entity): a
            # retried request is answered with the entity it added, a different one is refused.
        if numeric:
            if "numeric" not in self.model.modalities:
                raise InvalidRequest("this bundle takes no numeric attributes for new entities: its model was trained without numeric features (leave out `numeric`)", field="numeric")
            if not fmap.numeric_attributes:
                # The model has a numeric branch, but the feature map was fitted without the raw
                # file: a new entity's values could not be normalised as the training ones were.
                raise InvalidRequest(NO_NUMERIC_STATISTICS, field="numeric")
            allowed = set(fmap.numeric_attributes)
            for attr, value in numeric.items():
                if attr not in allowed:
                    raise InvalidRequest(f"unknown numeric attribute {attr!r}; close: {close_matches(attr, fmap.numeric_attributes)}", field=f"numeric.{attr}")
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise InvalidRequest(f"must be a finite number, got {value!r}", field=f"numeric.{attr}")

    @staticmethod
    def _entity_fields(name: str, description: str, numeric: dict[str, float]) -> dict:
        """A new entity's fields as its record stores them (one normalisation for both
        encode_new_entity and same_entity)."""
        return {"name": name.strip(), "description": description.strip(), "numeric": {k: float(v) for k, v in numeric.items()}}

    @classmethod
    def same_entity(cls, record: dict, name: str, description: str, numeric: dict[str, float]) -> bool:
        """Whether a stored record is what this request would store: the same name, description
        and numeric attributes. A retried POST (the client timed out after the record was
        stored) is then answered with that entity."""
        fields = cls._entity_fields(name, description, numeric)
        return all((record.get(k) or type(v)()) == v for k, v in fields.items())

    def encode_new_entity(self, name: str, description: str, numeric: dict[str, float], entity_id: str | None) -> dict:
        """The persistent record of a new entity: its text embedded with the offline encoder
        that built the text features (model.features.text; the `encoder` extra). Slow (the encoder)."""
        text = entity_text(name, description) or name
        vec = encode_texts([text])[0].astype(np.float32)
        return {
            "id": entity_id or f"new/{uuid.uuid4().hex[:12]}",
            **self._entity_fields(name, description, numeric),
            "text_vector": base64.b64encode(vec.tobytes()).decode("ascii"),
            "model": self.bundle.fingerprint,
        }

    @torch.no_grad()
    def rows_for(self, records: list[dict]) -> dict[str, Tensor]:
        """Every branch's rows for new-entity records (model.bundle.feature_map.FeatureMap.embed): (M, d)."""
        fmap = self.bundle.feature_map
        assert fmap is not None
        m = len(records)
        feats: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        for mod, dim in self.model.cfg.modalities.items():
            feats[mod] = np.zeros((m, dim), dtype=np.float32)
            present[mod] = np.zeros(m, dtype=bool)
        for i, rec in enumerate(records):
            feats["text"][i] = np.frombuffer(base64.b64decode(rec["text_vector"]), dtype=np.float32)
            present["text"][i] = True
            if rec.get("numeric") and "numeric" in feats:
                feats["numeric"][i] = fmap.numeric_features(rec["numeric"])
                present["numeric"][i] = True
        return fmap.embed(self.model, feats, present)

    def add_records(self, records: list[dict]) -> int:
        """Serve these records (the store's full list, or the few a request just stored or read
        from it) in addition to those already served: records already served keep their place,
        new ones are appended, and a served id whose record differs (the store was reset and
        the id reused) gets the stored record in its place. Returns how many were new."""
        with self._add_lock:
            return self._add_records(records)

    def _add_records(self, records: list[dict]) -> int:
        v = self.view
        place = {e: i for i, e in enumerate(v.added_ids)}
        fresh: list[tuple[dict, str]] = []
        changed: dict[int, tuple[dict, str]] = {}
        seen: set[str] = set()
        for r in records:
            if r["id"] in seen or self.bundle.vocab.has_entity_id(r["id"]) or r.get("model") != self.bundle.fingerprint:
                continue
            seen.add(r["id"])
            digest = record_digest(r)
            i = place.get(r["id"])
            if i is None:
                fresh.append((r, digest))
            elif v.added_digests[i] != digest:
                changed[i] = (r, digest)
        if not fresh and not changed:
            return 0
        ids, names, descriptions, digests = list(v.added_ids), list(v.added_names), list(v.added_descriptions), list(v.added_digests)
        rows = {b: t[self.num_base:] for b, t in v.tables.items()}
        if changed:
            # Replaced in place (same row, same id): never written into the old view's tensors,
            # which requests that started on it still read.
            where = list(changed)
            replaced = self.rows_for([r for r, _ in changed.values()])
            rows = {b: rows[b].clone() for b in self.branches}
            for b in self.branches:
                rows[b][where] = replaced[b].to(rows[b].dtype)
            for i, (r, digest) in changed.items():
                ids[i], names[i], descriptions[i], digests[i] = r["id"], r["name"], r["description"], digest
            log.warning("%d added entities changed in the store under ids already served (a reset store, ids reused): serving the stored records: %s",
                        len(changed), ", ".join(ids[i] for i in where[:5]))
        if fresh:
            new_rows = self.rows_for([r for r, _ in fresh])
            rows = {b: torch.cat([rows[b], new_rows[b].to(rows[b].dtype)]) for b in self.branches}
            ids += [r["id"] for r, _ in fresh]
            names += [r["name"] for r, _ in fresh]
            descriptions += [r["description"] for r, _ in fresh]
            digests += [d for _, d in fresh]
        self.set_added(ids, names, descriptions, rows, digests=digests)
        log.info("serving %d added entities (%d new, %d changed)", len(ids), len(fresh), len(changed))
        return len(fresh)
