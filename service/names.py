"""Name resolution for the engine: what a client writes (ids or exact names, of the bundle's
entities or of added ones) -> a `Query`, and entity indices back to what the API shows.

Unknown names become `NotFound` with close-name suggestions (model.kg.vocab); parameters out of
range `InvalidRequest`, each naming its field.
"""

from __future__ import annotations

from model.errors import UnknownNameError
from model.kg.triples import DIRECTIONS
from model.kg.vocab import Vocabulary
from service.added import AddedEntities
from service.errors import InvalidRequest, NotFound
from service.query import Query


class NameResolver:
    """The bundle's vocabulary plus the added entities (read through the registry's current view)."""

    def __init__(self, vocab: Vocabulary, added: AddedEntities) -> None:
        self.vocab = vocab
        self.added = added
        self.num_base = vocab.num_entities

    def resolve(self, head: str, relation: str, *, direction: str, k: int, filter_known: bool, max_k: int | None = None) -> Query:
        """Ids or names -> a Query; NotFound (with suggestions) / InvalidRequest otherwise."""
        if direction not in DIRECTIONS:
            raise InvalidRequest(f"direction must be one of {list(DIRECTIONS)}", field="direction")
        if k < 1 or (max_k is not None and k > max_k):
            raise InvalidRequest(f"k must be between 1 and {max_k}", field="k")
        e = self.resolve_entity(head, field="head")
        try:
            r = self.vocab.relation(relation)
        except UnknownNameError as exc:
            raise NotFound(str(exc), field="relation", suggestions=exc.suggestions) from exc
        return Query(entity=e, relation=r, direction=direction, k=k, filter_known=filter_known)

    def resolve_entity(self, key: str, *, field: str) -> int:
        """An entity id or name -> index; NotFound naming `field`, with close names, else."""
        try:
            return self.vocab.entity(key)
        except UnknownNameError as exc:
            hit = self.added.lookup(key)
            if hit is not None:
                return hit
            raise NotFound(str(exc), field=field, suggestions=exc.suggestions) from exc

    def is_known_id(self, key: str) -> bool:
        """An entity id of the bundle or of an added entity."""
        return self.vocab.has_entity_id(key) or self.added.has_id(key)

    def entity_info(self, e: int) -> dict[str, str]:
        """{"entity": id, "name": name} of entity index e (the bundle's or an added one)."""
        if e >= self.num_base:
            return self.added.info(e)
        return {"entity": self.vocab.entity_ids[e], "name": self.vocab.entity_names[e]}

    def entity_description(self, e: int) -> str:
        return self.added.description(e) if e >= self.num_base else self.vocab.entity_descriptions[e]

    def relation_info(self, r: int) -> dict[str, str]:
        return {"relation": self.vocab.relation_ids[r], "name": self.vocab.relation_names[r]}

    def describe(self, q: Query) -> dict:
        """The query as the API echoes it: resolved head and relation with names, direction."""
        return {"head": self.entity_info(q.entity), "relation": self.relation_info(q.relation), "direction": q.direction}

    def search_entities(self, text: str, limit: int) -> list[dict[str, str]]:
        """The vocabulary's search; added entities whose name or id contains the text come first
        (few, and the ones a user who just added them looks for)."""
        hits = (self.added.matching(text) + self.vocab.search_entities(text, limit))[:limit]
        return [{**self.entity_info(i), "description": self.entity_description(i)} for i in hits]
