"""A graph's vocabulary: entity and relation ids with readable names, and the lookups a user's
words go through (an id, or an exact case-insensitive name; close names when neither matches;
search by name or id). Shared by a loaded dataset and a loaded bundle, so both answer names
alike; the service resolves its requests with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from model.errors import UnknownNameError
from model.kg.names import NameIndex


@dataclass
class Vocabulary:
    """entity_* lists: shape (N,), in model order; relation_* lists: (R,) base relations (the
    model's reciprocal of relation r is r + R). entity_weights: (N,) number of training triples
    of each entity: a name shared by several entities resolves to the heaviest, and search
    results come in weight order."""

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
    def _entity_by_name(self) -> dict[str, int]:
        """Lower-cased name -> entity; a name shared by several entities goes to the one with
        the most training triples (deterministic, and the one a user most likely means)."""
        out: dict[str, int] = {}
        for i in np.argsort(-self.entity_weights, kind="stable"):
            out.setdefault(self.entity_names[i].lower(), int(i))
        return out

    @cached_property
    def _relation_by_name(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, n in enumerate(self.relation_names):
            out.setdefault(n.lower(), i)
        return out

    def has_entity_id(self, key: str) -> bool:
        """Whether `key` is an entity id (names do not count)."""
        return key in self._entity_index

    def entity(self, key: str) -> int:
        """Entity index from an id or an exact (case-insensitive) name; UnknownNameError else."""
        if key in self._entity_index:
            return self._entity_index[key]
        hit = self._entity_by_name.get(key.strip().lower())
        if hit is not None:
            return hit
        sugg = [self.entity_names[i] for i in self.name_index.close(key)]
        raise UnknownNameError("entity", key, [], suggestions=sugg)

    def relation(self, key: str) -> int:
        """Relation index (base, without reciprocal) from an id or exact name."""
        if key in self._relation_index:
            return self._relation_index[key]
        hit = self._relation_by_name.get(key.strip().lower())
        if hit is not None:
            return hit
        raise UnknownNameError("relation", key, self.relation_ids + self.relation_names)

    @cached_property
    def name_index(self) -> NameIndex:
        """Trigram index of the entity names and ids, weighted by training degree (model.kg.names):
        suggestions and search at a bounded cost per query, built once."""
        return NameIndex(self.entity_names, self.entity_ids, self.entity_weights)

    def search_entities(self, query: str, limit: int = 10) -> list[int]:
        """Entities whose name or id contains `query` (case-insensitive): exact matches first,
        then prefix matches, then substring matches, each by number of training triples."""
        return self.name_index.search(query, limit)


def training_degree(train: np.ndarray, num_entities: int) -> np.ndarray:
    """(N,) number of training triples each entity takes part in (as head or tail)."""
    return np.bincount(train[:, [0, 2]].ravel(), minlength=num_entities)
