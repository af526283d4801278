"""A graph's vocabulary: entity and relation ids with readable names, and the lookups a user's
words go through (an id, or an exact case-insensitive name; the candidates, by id, when several
entities share the name; close names when nothing matches; search by name or id). Shared by a
loaded dataset and a loaded bundle, so both answer names alike; the service resolves its
requests with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from model.errors import (
    MAX_CANDIDATES,
    AmbiguousNameError,
    NameCandidate,
    UnknownNameError,
)
from model.kg.names import NameIndex, SortedTexts


@dataclass
class Vocabulary:
    """entity_* lists: shape (N,), in model order; relation_* lists: (R,) base relations (the
    model's reciprocal of relation r is r + R). entity_weights: (N,) number of training triples
    of each entity: the candidates of a name several entities share, and search results, come in
    weight order."""

    entity_ids: list[str]
    entity_names: list[str]
    entity_descriptions: list[str]
    relation_ids: list[str]
    relation_names: list[str]
    entity_weights: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        if len(self.entity_weights) != len(self.entity_ids):
            self.entity_weights = np.zeros(len(self.entity_ids))

    @property
    def num_entities(self) -> int:
        return len(self.entity_ids)

    @property
    def num_relations(self) -> int:
        return len(self.relation_ids)

    @cached_property
    def _entity_index(self) -> dict[str, int]:
        return {e: i for i, e in enumerate(self.entity_ids)}

    @cached_property
    def _relation_index(self) -> dict[str, int]:
        return {r: i for i, r in enumerate(self.relation_ids)}

    @cached_property
    def _entity_by_name(self) -> SortedTexts:
        """The entities in the order of their normalised names (`name_key`), most training
        triples first among equal names: `entities_named` bisects it. An (N,) int32 permutation
        (model.kg.names.SortedTexts): dicts of a million names took 0.5 s and 180 MB. Taken
        from the name index when that is built already and has this order."""
        first = np.argsort(-self.entity_weights, kind="stable")
        index: NameIndex | None = self.__dict__.get("name_index")
        if index is not None and np.array_equal(index.order, first):
            ordered = index.names_by_key()
            if ordered is not None:
                return ordered
        return SortedTexts.build(self.entity_names, first, strip=True)

    @cached_property
    def _relation_by_name(self) -> tuple[dict[str, int], dict[str, list[int]]]:
        return _by_name(self.relation_names, range(len(self.relation_names)))

    def has_entity_id(self, key: str) -> bool:
        """Whether `key` is an entity id (names do not count)."""
        return key in self._entity_index

    def entities_named(self, name: str) -> list[int]:
        """Every entity whose name is exactly `name` (case-insensitive, surrounding blanks
        ignored), most training triples first; [] when none. Ids do not count."""
        return self._entity_by_name.equal(name_key(name)).tolist()

    def entity(self, key: str) -> int:
        """Entity index from an id, or from an exact (case-insensitive) name only one entity has.

        An id always resolves to its entity. A name several entities share raises
        AmbiguousNameError listing them (`entity_candidates`); an unknown key UnknownNameError
        with close names."""
        if key in self._entity_index:
            return self._entity_index[key]
        hits = self.entities_named(key)
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise AmbiguousNameError("entity", key, self.entity_candidates(hits[:MAX_CANDIDATES]), total=len(hits))
        raise self.unknown_entity(key)

    def unknown_entity(self, key: str) -> UnknownNameError:
        """The error for a key that is neither an entity id nor a name: with the close names."""
        return UnknownNameError("entity", key, [], suggestions=[self.entity_names[i] for i in self.name_index.close(key)])

    def entity_candidates(self, indices: Iterable[int]) -> list[NameCandidate]:
        """Id, name and description of these entities (what an ambiguous name lists)."""
        described = len(self.entity_descriptions)
        return [
            NameCandidate(self.entity_ids[i], self.entity_names[i], self.entity_descriptions[i] if i < described else "")
            for i in indices
        ]

    def find_relation(self, key: str) -> int | None:
        """`relation(key)` when it resolves, None otherwise (no error built: cheap)."""
        hit = self._relation_index.get(key)
        if hit is not None:
            return hit
        hits = _named(self._relation_by_name, key)
        return hits[0] if len(hits) == 1 else None

    def relation(self, key: str) -> int:
        """Relation index (base, without reciprocal) from an id or an exact name only one
        relation has (AmbiguousNameError for a shared one, UnknownNameError for none)."""
        if key in self._relation_index:
            return self._relation_index[key]
        hits = _named(self._relation_by_name, key)
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise AmbiguousNameError("relation", key, [NameCandidate(self.relation_ids[i], self.relation_names[i]) for i in hits[:MAX_CANDIDATES]], total=len(hits))
        raise UnknownNameError("relation", key, self.relation_ids + self.relation_names)

    @cached_property
    def name_index(self) -> NameIndex:
        """Trigram index of the entity names and ids, weighted by training degree (model.kg.names):
        suggestions and search at a bounded cost per query, built once. It takes the name order
        over from the exact-name lookups when those are built already (and the other way round:
        see _entity_by_name), so the names are sorted once."""
        return NameIndex(self.entity_names, self.entity_ids, self.entity_weights, sorted_names=self.__dict__.get("_entity_by_name"))

    def search_entities(self, query: str, limit: int = 10) -> list[int]:
        """Entities whose name or id contains `query` (case-insensitive): exact matches first,
        then prefix matches, then substring matches, each by number of training triples."""
        return self.name_index.search(query, limit)


def name_key(name: str) -> str:
    """What exact-name lookups compare: the name lower-cased, surrounding blanks stripped."""
    return name.strip().lower()


def _by_name(names: Sequence[str], order: Iterable[int]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """(unique, shared) name maps over `names`: normalised name (`name_key`) -> the one entry
    of that name; and -> the entries, in `order`, of the names several share (for the few
    relation names; entity names are looked up in a SortedTexts)."""
    first: dict[str, int] = {}
    shared: dict[str, list[int]] = {}
    for i in order:
        key = name_key(names[i])
        j = first.setdefault(key, i)
        if j != i:
            shared.setdefault(key, [j]).append(i)
    for key in shared:
        del first[key]
    return first, shared


def _named(maps: tuple[dict[str, int], dict[str, list[int]]], name: str) -> list[int]:
    key = name_key(name)
    one = maps[0].get(key)
    return [one] if one is not None else list(maps[1].get(key, ()))


def training_degree(train: np.ndarray, num_entities: int) -> np.ndarray:
    """(N,) number of training triples each entity takes part in (as head or tail)."""
    return np.bincount(train[:, [0, 2]].ravel(), minlength=num_entities)
