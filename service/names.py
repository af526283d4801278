"""Name resolution for the engine: what a client writes (ids or exact names, of the bundle's
entities or of added ones) -> a `Query`, and entity indices back to what the API shows.

An id always resolves to its entity. A name resolves only when exactly one entity has it (the
bundle's and the added ones counted together): a name several share becomes `Ambiguous` (409)
with the candidates, so the client asks again by id; an unknown one `NotFound` with close-name
suggestions (model.kg.vocab). Parameters out of range are `InvalidRequest`, each naming its
field.
"""

from __future__ import annotations

from model.errors import MAX_CANDIDATES, AmbiguousNameError, UnknownNameError
from model.kg.triples import DIRECTIONS
from model.kg.vocab import Vocabulary
from service.added import AddedEntities
from service.errors import Ambiguous, InvalidRequest, NotFound
from service.query import Query


def ambiguous(exc: AmbiguousNameError, field: str) -> Ambiguous:
    """The HTTP form of an ambiguous name: 409 naming `field`, with the candidates."""
    return Ambiguous(str(exc), field=field, candidates=[c.as_dict() for c in exc.candidates])


class NameResolver:
    """The bundle's vocabulary plus the added entities (read through the registry's current view)."""

    def __init__(self, vocab: Vocabulary, added: AddedEntities) -> None:
        self.vocab = vocab
        self.added = added
        self.num_base = vocab.num_entities

    def resolve(self, head: str, relation: str, *, direction: str, k: int, filter_known: bool, max_k: int | None = None) -> Query:
        """Ids or names -> a Query; NotFound (with suggestions) / Ambiguous (with candidates) /
        InvalidRequest otherwise."""
        if direction not in DIRECTIONS:
            raise InvalidRequest(f"direction must be one of {list(DIRECTIONS)}", field="direction")
        if k < 1 or (max_k is not None and k > max_k):
            raise InvalidRequest(f"k must be between 1 and {max_k}", field="k")
        e = self.resolve_entity(head, field="head")
        try:
            r = self.vocab.relation(relation)
        except UnknownNameError as exc:
            raise NotFound(str(exc), field="relation", suggestions=exc.suggestions) from exc
        except AmbiguousNameError as exc:
            raise ambiguous(exc, "relation") from exc
        return Query(entity=e, relation=r, direction=direction, k=k, filter_known=filter_known)

    def try_resolve(self, head: str, relation: str, *, direction: str, k: int, filter_known: bool, max_k: int | None = None) -> Query | None:
        """`resolve` for what resolves (an id, or a name one entity has): dictionary lookups
        only, cheap enough for the event loop. None for anything else, which `resolve` (in a
        worker: its errors look for close names) answers with the error."""
        if direction not in DIRECTIONS or k < 1 or (max_k is not None and k > max_k):
            return None
        e = self._find_entity(head)
        r = self.vocab.find_relation(relation)
        if e is None or r is None:
            return None
        return Query(entity=e, relation=r, direction=direction, k=k, filter_known=filter_known)

    def _find_entity(self, key: str) -> int | None:
        """`resolve_entity(key)` when it resolves, None otherwise (no error built)."""
        if self.vocab.has_entity_id(key):
            return self.vocab.entity(key)
        hit = self.added.lookup_id(key)
        if hit is not None:
            return hit
        base, added = self.vocab.entities_named(key), self.added.named(key)
        return (base or added)[0] if len(base) + len(added) == 1 else None

    def resolve_entity(self, key: str, *, field: str) -> int:
        """An entity id, or a name exactly one entity (of the bundle or added) has -> index.

        Ambiguous naming `field`, with every candidate (the bundle's most connected first, then
        the added ones in order added), for a shared name; NotFound with close names for none."""
        hit = self._find_entity(key)
        if hit is not None:
            return hit
        base, added = self.vocab.entities_named(key), self.added.named(key)
        if base or added:
            shown = base[:MAX_CANDIDATES]
            candidates = self.vocab.entity_candidates(shown) + self.added.candidates(added[: MAX_CANDIDATES - len(shown)])
            raise ambiguous(AmbiguousNameError("entity", key, candidates, total=len(base) + len(added)), field)
        unknown = self.vocab.unknown_entity(key)
        raise NotFound(str(unknown), field=field, suggestions=unknown.suggestions)

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
