"""Checks that catch the usual mistakes in a dataset that loads (`imf data check`, and the
importer after writing): each returns warnings, one line each, with the numbers that raised it.
The loader (model.kg.dataset) already refuses what is malformed; these look at what is well
formed but probably not what was meant.

- the column order looks wrong: values used both as a relation and as an entity, or far more
  relations than a graph of that size has;
- entity names empty, or shared by several entities (homonyms: asked by name, they answer with
  the candidates), or by far more than homonyms explain (a wrong name column);
- entity text or `attributes.tsv` present but no text / numeric features built from them;
- entities listed in entities.tsv that occur in no triple.
"""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path

import numpy as np

from model.kg.dataset import KGDataset, find_file, open_text, read_table

# A graph with this many relations or fewer is never called relation-heavy: a small hand-made
# graph (5 entities, 3 relations) legitimately has about as many relations as entities.
MANY_RELATIONS_FLOOR = 20
# Real knowledge graphs have relations by the dozen or hundred and entities by the thousand
# (FB15k-237: 237 for 14,505 entities and 272,115 training triples; WN18RR: 11 for 40,943;
# Wikidata5M: 822 for 4.6 million; CoDEx-S: 42 for 2,034), so each relation has hundreds of
# triples. Reading a head or tail column as the relation turns every distinct entity of that
# column into a "relation": relations then number about as many as entities, with a few
# triples each. Either sign beyond the floor is reported:
RELATIONS_PER_ENTITY_MAX = 0.5  # more relations than half the entities
TRIPLES_PER_RELATION_MIN = 3.0  # fewer than 3 training triples per relation on average
# Homonyms are normal: 8.8% of WN9-IMG's entities share their name with another (word senses,
# 'screen' five times), 3.6% of FB15k-237's ('Washington County' seven times). A name column
# that holds something else (a type, a constant, a truncated field) makes far more:
SHARED_NAME_FRACTION_MAX = 0.2  # more than 20% of named entities share a name
SHARED_NAME_COUNT_MIN = 10  # or one name is held by more than max(10, 1% of entities)


def _example(values: Counter) -> tuple[str, int]:
    """The most frequent value (ties: the smallest), with its count."""
    value, count = min(values.items(), key=lambda kv: (-kv[1], kv[0]))
    return value, count


def check_column_order(ds: KGDataset) -> list[str]:
    """Values that are both relations and entities; a relation count no real graph has."""
    warnings: list[str] = []
    triples = ds.all_triples()
    rel_use = Counter(ds.relation_ids[r] for r in triples[:, 1].tolist())
    ent_use = Counter(ds.entity_ids[e] for e in triples[:, [0, 2]].ravel().tolist())
    both = Counter({v: rel_use[v] + ent_use[v] for v in rel_use.keys() & ent_use.keys()})
    if both:
        value, _ = _example(both)
        warnings.append(
            f"{len(both):,} of {ds.num_relations:,} relations are also used as entities (e.g. {value!r}: {rel_use[value]:,} triples "
            f"as a relation, {ent_use[value]:,} as an entity): is the column order head, relation, tail? "
            "(`imf data import --columns` sets it)"
        )
    n_rel, n_ent, n_train = ds.num_relations, ds.num_entities, len(ds.train)
    per_relation = n_train / max(n_rel, 1)
    if n_rel > MANY_RELATIONS_FLOOR and (n_rel > RELATIONS_PER_ENTITY_MAX * n_ent or per_relation < TRIPLES_PER_RELATION_MIN):
        warnings.append(
            f"{n_rel:,} relations for {n_ent:,} entities and {n_train:,} training triples ({per_relation:.1f} per relation): "
            f"knowledge graphs have far fewer relations than entities (FB15k-237: 237 for 14,505), as a head or tail column "
            "read as the relation gives; is the column order head, relation, tail?"
        )
    return warnings


def entity_file_rows(ent_file: Path) -> list[list[str]]:
    """The fields of each entities.tsv row as written (id, name?, description?)."""
    return [cols for _, cols in read_table(ent_file, 1, 3)]


def entity_text_counts(root: Path) -> tuple[int, int]:
    """(entities with a description, entities with a name other than their id) in
    `root`'s entities.tsv; (0, 0) without one. Text features are worth building when either
    is not zero (model.features.prepare)."""
    ent_file = find_file(Path(root), "entities.tsv")
    if ent_file is None:
        return 0, 0
    rows = entity_file_rows(ent_file)
    described = sum(1 for cols in rows if len(cols) > 2 and cols[2])
    named = sum(1 for cols in rows if len(cols) > 1 and cols[1] and cols[1] != cols[0])
    return described, named


def check_names(ds: KGDataset) -> list[str]:
    """Entities of entities.tsv without a name; names shared by several entities (homonyms), or by
    far more than homonyms explain."""
    ent_file = find_file(ds.root, "entities.tsv")
    if ent_file is None:
        return []
    warnings: list[str] = []
    rows = entity_file_rows(ent_file)
    unnamed = [cols[0] for cols in rows if len(cols) < 2 or not cols[1]]
    if unnamed:
        warnings.append(
            f"{len(unnamed):,} of {len(rows):,} entities in {ent_file.name} have no name (e.g. {unnamed[0]!r}): "
            "the service shows their id, and text features have only their description"
        )
    names = Counter(cols[1].strip().lower() for cols in rows if len(cols) > 1 and cols[1])
    shared = {n: c for n, c in names.items() if c > 1}
    named = sum(names.values())
    if shared:
        in_shared = sum(shared.values())
        name, count = _example(Counter(shared))
        if in_shared > SHARED_NAME_FRACTION_MAX * named or count > max(SHARED_NAME_COUNT_MIN, 0.01 * named):
            warnings.append(
                f"{in_shared:,} of {named:,} named entities share their name with another ({len(shared):,} names); "
                f"{name!r} is held by {count:,}: far more than homonyms explain. Is the name column right?"
            )
        else:
            # Homonyms: nothing wrong with the data, but a user asking by such a name gets the
            # candidates (HTTP 409, `imf predict` lists them) instead of an answer.
            warnings.append(
                f"{len(shared):,} {'name is' if len(shared) == 1 else 'names are'} shared by several entities ({in_shared:,} of {named:,}; e.g. {name!r}, {count:,} entities): "
                "asked by such a name, the service and `imf predict` answer with the candidates' ids; ask by id"
            )
    return warnings


def _count_lines(path: Path) -> int:
    return sum(1 for line in open_text(path) if line.strip())


def check_features(ds: KGDataset) -> list[str]:
    """Entity text or attributes.tsv present, but the features built from them are not."""
    warnings: list[str] = []
    root = Path(ds.root)
    feat = root / "features"
    where = shlex.quote(str(root))
    described, named = entity_text_counts(root)
    if (described or named) and not (feat / "text.npy").is_file():
        what = f"descriptions for {described:,} entities" if described else f"names for {named:,} entities"
        warnings.append(f"entities.tsv has {what} but no text features yet: `imf train` builds them (or `imf features text {where}`)")
    attributes = root / "attributes.tsv"
    if attributes.is_file() and not (feat / "numeric.npy").is_file():
        warnings.append(
            f"attributes.tsv holds {_count_lines(attributes):,} values but no numeric features yet: "
            f"`imf train` builds them (or `imf features numeric {where}`)"
        )
    return warnings


def check_unused_entities(ds: KGDataset) -> list[str]:
    """Entities of the vocabulary (entities.tsv) that occur in no triple of any split."""
    triples = ds.all_triples()
    degree = np.bincount(triples[:, [0, 2]].ravel(), minlength=ds.num_entities)
    unused = np.flatnonzero(degree == 0)
    if not len(unused):
        return []
    return [
        (
            f"{len(unused):,} of {ds.num_entities:,} entities occur in no triple (e.g. {ds.entity_ids[unused[0]]!r}): "
            "their embeddings never train; remove them from entities.tsv or add their triples"
        )
    ]


def check_dataset(ds: KGDataset) -> list[str]:
    """Every check's warnings, in the order of the module docstring (empty: nothing to say)."""
    return check_column_order(ds) + check_names(ds) + check_features(ds) + check_unused_entities(ds)
