"""model.kg.checks and `imf data check`: each warning fires on a graph crafted to have the mistake
it looks for, and none fires on a bundled dataset or on the same graph without the mistake."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.cli import main as cli_main
from model.features.numeric import build_numeric_features
from model.kg import checks
from model.kg.dataset import load_dataset
from model.kg.importer import import_graph
from tests.helpers import write_dataset

Triple = tuple[str, str, str]


def random_triples(n_entities: int, n_relations: int, n: int, seed: int = 0) -> list[Triple]:
    rng = np.random.default_rng(seed)
    rows = {(f"e{h}", f"r{r}", f"e{t}") for h, r, t in zip(rng.integers(0, n_entities, n), rng.integers(0, n_relations, n), rng.integers(0, n_entities, n))}
    return sorted(rows)


def dataset(root: Path, triples: list[Triple], entities: list[tuple[str, str, str]] | None = None) -> Path:
    """`triples` as train; one valid and one test triple made of train's entities and relations."""
    (h0, r0, t0), (h1, r1, t1) = triples[0], triples[1]
    return write_dataset(root, triples, [(h0, r0, t1)], [(h1, r1, t0)], entities=entities)


def warnings_of(root: Path) -> list[str]:
    return checks.check_dataset(load_dataset(root))


@pytest.fixture(scope="module")
def wn9() -> object:
    return load_dataset("wn9-img")


@pytest.mark.parametrize("check", [checks.check_column_order, checks.check_features, checks.check_unused_entities])
def test_no_check_fires_on_wn9_img(wn9: object, check) -> None:
    assert check(wn9) == []


def test_wn9_homonyms_are_reported_as_homonyms(wn9: object) -> None:
    """Word senses share names ('screen' 5 times): said, but not taken for a wrong column."""
    (warning,) = checks.check_names(wn9)
    assert "names are shared by several entities" in warning and "ask by id" in warning
    assert "Is the name column right?" not in warning


def test_a_clean_graph_has_no_warning(tmp_path: Path) -> None:
    triples = random_triples(30, 3, 150)
    ids = sorted({h for h, _, _ in triples} | {t for _, _, t in triples})
    root = dataset(tmp_path / "d", triples, [(e, f"name {e}", f"thing {e}") for e in ids])
    (root / "features").mkdir()
    np.save(root / "features" / "text.npy", np.ones((len(ids), 4), dtype=np.float32))
    (root / "features" / "text.ids.txt").write_text("".join(f"{e}\n" for e in ids), encoding="utf-8")
    assert warnings_of(root) == []
    assert warnings_of(dataset(tmp_path / "bare", triples)) == []  # no entities.tsv: nothing to say either


def test_value_both_relation_and_entity(tmp_path: Path) -> None:
    triples = random_triples(30, 3, 150) + [("e1", "e2", "e3"), ("e2", "e2", "e4")]
    (warning,) = checks.check_column_order(load_dataset(dataset(tmp_path / "d", triples)))
    assert warning.startswith("1 of 4 relations are also used as entities (e.g. 'e2': 2 triples as a relation, ")
    assert "column order" in warning


@pytest.mark.parametrize("n_entities, n_relations, n_triples, reason", [(40, 30, 150, "relations > entities / 2"), (200, 25, 62, "< 3 triples per relation")])
def test_far_more_relations_than_a_graph_has(tmp_path: Path, n_entities: int, n_relations: int, n_triples: int, reason: str) -> None:
    ds = load_dataset(dataset(tmp_path / "d", random_triples(n_entities, n_relations, n_triples)))
    assert ds.num_relations > 20, reason
    (warning,) = checks.check_column_order(ds)
    assert warning.startswith(f"{ds.num_relations} relations for {ds.num_entities} entities and {len(ds.train)} training triples")


def test_a_small_hand_made_graph_is_not_relation_heavy(tmp_path: Path) -> None:
    triples = [("a", "likes", "b"), ("b", "knows", "c"), ("c", "hates", "a"), ("a", "likes", "c"), ("b", "likes", "a"), ("c", "knows", "b")]
    write_dataset(tmp_path / "d", triples, [("a", "knows", "b")], [("c", "likes", "b")])
    assert checks.check_column_order(load_dataset(tmp_path / "d")) == []


def test_swapped_columns_are_caught_and_the_right_order_is_quiet(tmp_path: Path) -> None:
    """A file written head,tail,relation read as head,relation,tail."""
    rows = random_triples(60, 3, 300)
    path = tmp_path / "g.tsv"
    path.write_text("".join(f"{h}\t{t}\t{r}\n" for h, r, t in rows), encoding="utf-8")
    report = import_graph(path, tmp_path / "wrong")
    assert len(report.warnings) == 2
    assert "relations are also used as entities" in report.warnings[0]
    assert "relations for" in report.warnings[1] and "is the column order head, relation, tail?" in report.warnings[1]
    assert import_graph(path, tmp_path / "right", columns="head,tail,relation").warnings == []


def test_empty_names(tmp_path: Path) -> None:
    triples = random_triples(30, 3, 150)
    ids = sorted({h for h, _, _ in triples} | {t for _, _, t in triples})
    ents = [(e, "" if i % 10 == 0 else f"name {e}", "") for i, e in enumerate(ids)]
    (warning,) = checks.check_names(load_dataset(dataset(tmp_path / "d", triples, ents)))
    assert warning.startswith(f"3 of {len(ids)} entities in entities.tsv have no name (e.g. {ids[0]!r})")


def test_names_shared_far_beyond_homonyms(tmp_path: Path) -> None:
    triples = random_triples(30, 3, 150)
    ids = sorted({h for h, _, _ in triples} | {t for _, _, t in triples})
    # the type column read as the name: 'person' for most
    ents = [(e, "Person" if i < 20 else f"place {i}", "") for i, e in enumerate(ids)]
    (warning,) = checks.check_names(load_dataset(dataset(tmp_path / "d", triples, ents)))
    assert warning.startswith(f"20 of {len(ids)} named entities share their name with another (1 names); 'person' is held by 20")
    assert warning.endswith("Is the name column right?")
    # a few homonyms are normal: said as such
    ents = [(e, "Springfield" if i < 2 else f"place {i}", "") for i, e in enumerate(ids)]
    (warning,) = checks.check_names(load_dataset(dataset(tmp_path / "ok", triples, ents)))
    assert warning.startswith("1 name is shared by several entities (2 of") and "'springfield', 2 entities" in warning
    ents = [(e, f"place {i}", "") for i, e in enumerate(ids)]
    assert checks.check_names(load_dataset(dataset(tmp_path / "unique", triples, ents))) == []


def test_text_and_attributes_without_features(tmp_path: Path) -> None:
    triples = random_triples(30, 3, 150)
    ids = sorted({h for h, _, _ in triples} | {t for _, _, t in triples})
    root = dataset(tmp_path / "d", triples, [(e, e, f"thing {e}" if i < 5 else "") for i, e in enumerate(ids)])
    (root / "attributes.tsv").write_text("e1\tage\t3\ne2\tage\t5\ne2\theight\t1.5\n", encoding="utf-8")
    text, numeric = checks.check_features(load_dataset(root))
    assert text == f"entities.tsv has descriptions for 5 entities but no text features yet: `imf train` builds them (or `imf features text {root}`)"
    assert numeric == f"attributes.tsv holds 3 values but no numeric features yet: `imf train` builds them (or `imf features numeric {root}`)"
    build_numeric_features(root, root / "attributes.tsv")
    assert checks.check_features(load_dataset(root)) == [text]
    # names other than the ids call for text features too; ids as names do not
    root = dataset(tmp_path / "named", triples, [(e, f"Name {e}", "") for e in ids])
    assert checks.check_features(load_dataset(root)) == [f"entities.tsv has names for {len(ids)} entities but no text features yet: `imf train` builds them (or `imf features text {root}`)"]
    root = dataset(tmp_path / "ids", triples, [(e, e, "") for e in ids])
    assert checks.check_features(load_dataset(root)) == []


def test_entities_in_no_triple(tmp_path: Path) -> None:
    triples = random_triples(30, 3, 150)
    ids = sorted({h for h, _, _ in triples} | {t for _, _, t in triples})
    root = dataset(tmp_path / "d", triples, [(e, e, "") for e in ids + ["lonely", "alone"]])
    (warning,) = checks.check_unused_entities(load_dataset(root))
    assert warning.startswith(f"2 of {len(ids) + 2} entities occur in no triple (e.g. 'lonely')")


def test_cli_check_prints_warnings_on_stderr_and_json_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    triples = random_triples(30, 3, 150)
    ids = sorted({h for h, _, _ in triples} | {t for _, _, t in triples})
    root = dataset(tmp_path / "d", triples, [(e, e, "") for e in ids + ["lonely"]])
    assert cli_main(["data", "check", str(root)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert len(report["warnings"]) == 1 and "occur in no triple" in report["warnings"][0]
    assert f"warning: {report['warnings'][0]}" in captured.err
    assert cli_main(["data", "check", "wn9-img"]) == 0
    assert [w for w in json.loads(capsys.readouterr().out)["warnings"] if "shared by several entities" not in w] == []
