"""`imf data import` (model.kg.importer): CSV and TSV files of one's own graph become a dataset
directory that loads, with honest splits, precise errors, and a folder that appears whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from model.cli import main as cli_main
from model.errors import DataError
from model.kg import importer
from model.kg.dataset import load_dataset
from model.kg.importer import import_graph

Triple = tuple[str, str, str]


def graph(n_entities: int = 40, n_relations: int = 4, n_triples: int = 200, seed: int = 0) -> list[Triple]:
    rng = np.random.default_rng(seed)
    rows = zip(rng.integers(0, n_entities, n_triples), rng.integers(0, n_relations, n_triples), rng.integers(0, n_entities, n_triples))
    return [(f"e{h}", f"r{r}", f"e{t}") for h, r, t in rows]


def write(path: Path, rows: list[tuple[str, ...]], sep: str = ",", header: tuple[str, ...] | None = None, bom: bool = False) -> Path:
    lines = ([sep.join(header)] if header else []) + [sep.join(r) for r in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def triples_of(root: Path) -> dict[str, list[Triple]]:
    ds = load_dataset(root, with_features=False)
    return {
        s: [(ds.entity_ids[h], ds.relation_ids[r], ds.entity_ids[t]) for h, r, t in ds.split(s).tolist()]
        for s in ("train", "valid", "test")
    }


def assert_honest(splits: dict[str, list[Triple]]) -> None:
    sets = {s: set(t) for s, t in splits.items()}
    assert not sets["train"] & sets["valid"] and not sets["train"] & sets["test"] and not sets["valid"] & sets["test"]
    ents = {h for h, _, _ in splits["train"]} | {t for _, _, t in splits["train"]}
    rels = {r for _, r, _ in splits["train"]}
    for s in ("valid", "test"):
        for h, r, t in splits[s]:
            assert h in ents and t in ents and r in rels


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------ reading


def test_header_or_not_gives_the_same_dataset(tmp_path: Path) -> None:
    rows = graph()
    with_header = write(tmp_path / "h.csv", rows, header=("subject", "predicate", "object"))
    without = write(tmp_path / "n.csv", rows)
    a = import_graph(with_header, tmp_path / "a")
    b = import_graph(without, tmp_path / "b")
    assert "header line skipped" in a.inputs["triples"] and "no header" in b.inputs["triples"]
    assert triples_of(tmp_path / "a") == triples_of(tmp_path / "b")
    assert "subject" not in load_dataset(tmp_path / "a", with_features=False).entity_ids
    assert a.counts["train"] + a.counts["valid"] + a.counts["test"] == len(set(rows))


def test_columns_name_another_order(tmp_path: Path) -> None:
    rows = graph()
    import_graph(write(tmp_path / "ref.tsv", rows, sep="\t"), tmp_path / "ref")
    swapped = write(tmp_path / "htr.tsv", [(h, t, r) for h, r, t in rows], sep="\t")
    import_graph(swapped, tmp_path / "by_role", columns="head,tail,relation")
    assert triples_of(tmp_path / "by_role") == triples_of(tmp_path / "ref")
    # by the header's names, in head, relation, tail order; an extra column is ignored
    named = write(tmp_path / "named.csv", [(t, "1.0", h, r) for h, r, t in rows], header=("dst", "weight", "src", "kind"))
    import_graph(named, tmp_path / "by_name", columns=["src", "kind", "dst"])
    assert triples_of(tmp_path / "by_name") == triples_of(tmp_path / "ref")


def test_header_names_alone_set_the_order(tmp_path: Path) -> None:
    rows = graph()
    import_graph(write(tmp_path / "ref.csv", rows), tmp_path / "ref")
    path = write(tmp_path / "o.csv", [(t, h, r) for h, r, t in rows], header=("Object", "Subject", "Predicate"))
    import_graph(path, tmp_path / "o")
    assert triples_of(tmp_path / "o") == triples_of(tmp_path / "ref")


def test_columns_that_contradict_the_header_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "g.csv", graph(), header=("head", "relation", "tail"))
    with pytest.raises(DataError) as info:
        import_graph(path, tmp_path / "out", columns="head,tail,relation")
    assert info.value.line == 1 and "contradicts the header" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    rows = [("paris", "capital_of", "france")] + graph()
    path = write(tmp_path / "g.csv", rows, bom=True)
    ents = write(tmp_path / "e.csv", [("paris", "Paris")], bom=True)
    import_graph(path, tmp_path / "out", entities=ents)
    ds = load_dataset(tmp_path / "out", with_features=False)
    assert "paris" in ds.entity_ids and not any(e.startswith("\ufeff") for e in ds.entity_ids)
    assert ds.entity_names[ds.entity_ids.index("paris")] == "Paris"


def test_csv_and_tsv_give_identical_files(tmp_path: Path) -> None:
    rows = graph()
    import_graph(write(tmp_path / "g.csv", rows, sep=","), tmp_path / "csv")
    import_graph(write(tmp_path / "g.txt", rows, sep="\t"), tmp_path / "tsv")
    import_graph(write(tmp_path / "g.semi", rows, sep=";"), tmp_path / "semi")
    files = folder_bytes(tmp_path / "csv")
    files.pop("dataset.json")  # names its source file and hash
    for other in ("tsv", "semi"):
        theirs = folder_bytes(tmp_path / other)
        theirs.pop("dataset.json")
        assert theirs == files


def test_quoted_fields_keep_their_commas(tmp_path: Path) -> None:
    rows = graph()
    text = "\n".join(",".join(r) for r in rows) + '\n"Paris, France",capital_of,e1\n'
    (tmp_path / "g.csv").write_text(text, encoding="utf-8")
    (tmp_path / "e.csv").write_text('id,name,description\n"Paris, France","Paris","capital, and ""largest"" city"\ne1,France,\n', encoding="utf-8")
    import_graph(tmp_path / "g.csv", tmp_path / "out", entities=tmp_path / "e.csv")
    ds = load_dataset(tmp_path / "out", with_features=False)
    i = ds.entity_ids.index("Paris, France")
    assert ds.entity_names[i] == "Paris" and ds.entity_descriptions[i] == 'capital, and "largest" city'
    assert ds.entity_names[ds.entity_ids.index("e1")] == "France"


def test_tab_separated_names_with_commas_are_not_taken_for_csv(tmp_path: Path) -> None:
    rows = graph()
    import_graph(write(tmp_path / "g.tsv", rows, sep="\t"), tmp_path / "out",
                 entities=write(tmp_path / "e.tsv", [(f"e{i}", f"Smith, John {i}", "a, b, c, d") for i in range(40)], sep="\t"))
    ds = load_dataset(tmp_path / "out", with_features=False)
    assert ds.entity_names[ds.entity_ids.index("e3")] == "Smith, John 3"


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text("a,r,b\n\n  \nb,r,c\nc,r\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        import_graph(tmp_path / "g.csv", tmp_path / "out")
    assert info.value.path.endswith("g.csv") and info.value.line == 5
    assert "expected 3 comma-separated fields (head, relation, tail), found 2" in str(info.value)


def test_wrong_field_count_names_file_and_line(tmp_path: Path) -> None:
    rows = graph(n_triples=30)
    text = "\n".join("\t".join(r) for r in rows[:10]) + "\na\tr\tb\textra\n" + "\n".join("\t".join(r) for r in rows[10:]) + "\n"
    (tmp_path / "g.tsv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        import_graph(tmp_path / "g.tsv", tmp_path / "out")
    assert info.value.line == 11 and "found 4" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_empty_id_and_id_with_a_tab_are_errors(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text("a,r,b\n,r,c\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        import_graph(tmp_path / "g.csv", tmp_path / "out")
    assert info.value.line == 2 and "field 'head' is empty" in str(info.value)
    (tmp_path / "g.csv").write_text('a,r,b\nb,r,"c\td"\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        import_graph(tmp_path / "g.csv", tmp_path / "out")
    assert info.value.line == 2 and "field 'tail'" in str(info.value) and "tab or line break" in str(info.value)


def test_bad_attribute_value_names_file_line_and_field(tmp_path: Path) -> None:
    g = write(tmp_path / "g.csv", graph())
    attrs = write(tmp_path / "a.csv", [("e1", "age", "31"), ("e2", "height", "1,85")], sep=";")
    with pytest.raises(DataError) as info:
        import_graph(g, tmp_path / "out", attributes=attrs)
    err = info.value
    assert err.path.endswith("a.csv") and err.line == 2
    assert "field 'value': not a number: '1,85'" in str(err) and "decimals with a point" in str(err)
    write(attrs, [("e1", "age", "31"), ("e2", "height", "nan")], sep=";")
    with pytest.raises(DataError, match=r"a\.csv:2: field 'value': 'nan' is not a finite number"):
        import_graph(g, tmp_path / "out", attributes=attrs)
    assert not (tmp_path / "out").exists()


def test_duplicate_entity_id_names_both_lines(tmp_path: Path) -> None:
    g = write(tmp_path / "g.csv", graph())
    ents = write(tmp_path / "e.csv", [("e1", "One"), ("e2", "Two"), ("e1", "Uno")])
    with pytest.raises(DataError) as info:
        import_graph(g, tmp_path / "out", entities=ents)
    assert info.value.line == 3 and "first on line 1" in str(info.value)


def test_entities_and_attributes_outside_the_graph_are_skipped_and_counted(tmp_path: Path) -> None:
    g = write(tmp_path / "g.csv", graph())
    ents = write(tmp_path / "e.csv", [("e1", "One", "the first"), ("ghost", "Ghost", ""), ("e2", "Two", "")], header=("id", "name", "description"))
    attrs = write(tmp_path / "a.tsv", [("e1", "age", "31"), ("ghost", "age", "3"), ("e2", "height", "-1.5e2")], sep="\t")
    report = import_graph(g, tmp_path / "out", entities=ents, attributes=attrs)
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["cleaning"]["entities_not_in_graph_skipped"] == 1
    assert meta["cleaning"]["attribute_rows_not_in_graph_skipped"] == 1
    assert (tmp_path / "out" / "attributes.tsv").read_text() == "e1\tage\t31\ne2\theight\t-1.5e2\n"
    assert report.named_entities == 2 and report.attribute_values == 2 and report.attribute_names == 2
    ds = load_dataset(tmp_path / "out", with_features=False)
    assert "ghost" not in ds.entity_ids
    assert ds.entity_descriptions[ds.entity_ids.index("e1")] == "the first"


# ------------------------------------------------------------------------------ splits


def test_split_is_honest_sized_and_seeded(tmp_path: Path) -> None:
    rows = graph(n_entities=60, n_relations=5, n_triples=600)
    path = write(tmp_path / "g.csv", rows + rows[:7])  # 7 repeats
    report = import_graph(path, tmp_path / "a", fractions=(0.7, 0.2, 0.1), seed=3)
    splits = triples_of(tmp_path / "a")
    assert_honest(splits)
    n = len(set(rows))
    assert report.cleaning["duplicates_dropped"] == 7 + len(rows) - n
    assert len(splits["valid"]) == round(0.2 * n) and len(splits["test"]) == round(0.1 * n)
    assert sum(len(v) for v in splits.values()) == n
    meta = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert meta["import"]["split"] == {"fractions": [0.7, 0.2, 0.1], "seed": 3}
    import_graph(path, tmp_path / "b", fractions=(0.7, 0.2, 0.1), seed=3)
    assert triples_of(tmp_path / "b") == splits
    import_graph(path, tmp_path / "c", fractions=(0.7, 0.2, 0.1), seed=4)
    assert triples_of(tmp_path / "c") != splits


def test_too_few_triples_to_split_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "g.csv", [("a", "r", "b"), ("c", "s", "d")])
    with pytest.raises(DataError) as info:
        import_graph(path, tmp_path / "out")
    assert "valid and test would be empty" in str(info.value) and "--valid and --test" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_given_splits_are_repaired_and_reported(tmp_path: Path) -> None:
    train = [("a", "r", "b"), ("b", "r", "c"), ("c", "s", "a"), ("a", "s", "d")] + graph()
    t = write(tmp_path / "train.csv", train)
    v = write(tmp_path / "valid.csv", [("a", "r", "b"), ("a", "r", "nowhere"), ("b", "s", "c"), ("b", "s", "c"), ("d", "r", "a")])
    s = write(tmp_path / "test.csv", [("d", "r", "a"), ("a", "new", "b"), ("c", "r", "d")])
    report = import_graph(t, tmp_path / "out", valid=v, test=s)
    splits = triples_of(tmp_path / "out")
    assert_honest(splits)
    assert splits["valid"] == [("b", "s", "c")]
    assert splits["test"] == [("d", "r", "a"), ("c", "r", "d")]  # test stays as given, less the unseen
    c = report.cleaning
    assert (c["valid_in_train_dropped"], c["valid_unseen_in_train_dropped"], c["valid_duplicates_dropped"], c["valid_in_test_dropped"]) == (1, 1, 1, 1)
    assert c["test_unseen_in_train_dropped"] == 1 and c["test_in_train_dropped"] == 0
    assert report.split is None and "  splits as given, repaired" in report.summary()
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["cleaning"] == c and meta["import"]["split"] == "given"


def test_given_splits_left_empty_is_an_error(tmp_path: Path) -> None:
    train = graph()
    t = write(tmp_path / "train.csv", train)
    v = write(tmp_path / "valid.csv", [train[0], train[1]])
    s = write(tmp_path / "test.csv", [("e1", "r_new", "e2")])
    with pytest.raises(DataError) as info:
        import_graph(t, tmp_path / "out", valid=v, test=s)
    assert info.value.path.endswith("valid.csv") and "no valid triple is left" in str(info.value) and "also in train" in str(info.value)


def test_valid_without_test_is_refused(tmp_path: Path) -> None:
    t = write(tmp_path / "train.csv", graph())
    with pytest.raises(ValueError, match="both --valid and --test"):
        import_graph(t, tmp_path / "out", valid=t)


# ------------------------------------------------------------------------------ writing


def test_output_loads_and_checks_clean(tmp_path: Path) -> None:
    g = write(tmp_path / "g.csv", graph())
    report = import_graph(g, tmp_path / "out", name="toy")
    ds = load_dataset(tmp_path / "out")
    assert ds.name == "toy" and report.counts["entities"] == ds.num_entities
    assert report.warnings == []
    assert report.next_commands()[0] == f"imf data check {tmp_path / 'out'}"
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert "default_modalities" not in meta  # every feature modality built later is used


def test_existing_folder_is_refused_unless_overwrite_which_is_idempotent(tmp_path: Path) -> None:
    g = write(tmp_path / "g.csv", graph())
    out = tmp_path / "out"
    import_graph(g, out, attributes=write(tmp_path / "a.csv", [("e1", "age", "3")]))
    first = folder_bytes(out)
    with pytest.raises(DataError, match="already exists: pass --overwrite"):
        import_graph(g, out)
    assert folder_bytes(out) == first
    (out / "features").mkdir()
    (out / "features" / "stale.npy").write_bytes(b"x")
    import_graph(g, out, attributes=tmp_path / "a.csv", overwrite=True)
    assert folder_bytes(out) == first and not (out / "features").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_overwrite_refuses_a_folder_that_is_not_a_dataset_or_holds_an_input(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    g = write(tmp_path / "g.csv", graph())
    with pytest.raises(DataError, match="not a dataset folder"):
        import_graph(g, home, overwrite=True)
    assert (home / "notes.txt").read_text() == "mine"
    out = tmp_path / "out"
    import_graph(g, out)
    inside = write(out / "more.csv", graph(seed=1))
    with pytest.raises(DataError, match="inside the output folder"):
        import_graph(inside, out, overwrite=True)
    assert inside.is_file()


def test_a_failure_while_writing_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = write(tmp_path / "g.csv", graph())

    def broken(*args: object, **kwargs: object) -> None:
        raise DataError(tmp_path, "simulated")

    monkeypatch.setattr(importer, "load_dataset", broken)
    with pytest.raises(DataError, match="simulated"):
        import_graph(g, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["g.csv"]


def test_cli_import_prints_summary_and_next_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = write(tmp_path / "g.csv", graph(), header=("head", "relation", "tail"))
    ents = write(tmp_path / "e.csv", [(f"e{i}", f"Thing {i}", "a thing") for i in range(40)])
    out = tmp_path / "kg"
    code = cli_main(["data", "import", "--triples", str(g), "--entities", str(ents), "--out", str(out), "--split", "0.8,0.1,0.1"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"imported 'kg' into {out}" in captured.out
    assert f"imf data check {out}" in captured.out and f"imf train --dataset {out} --out" in captured.out
    assert "warning: entities.tsv has descriptions for 40 entities but no text features yet" in captured.err
    code = cli_main(["data", "import", "--triples", str(g), "--out", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_cli_import_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "g.csv").write_text("a,r,b\nb,r\n", encoding="utf-8")
    code = cli_main(["data", "import", "--triples", str(tmp_path / "g.csv"), "--out", str(tmp_path / "kg")])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'g.csv'}:2: expected 3" in err and "Traceback" not in err
    code = cli_main(["data", "import", "--triples", str(tmp_path / "g.csv"), "--out", str(tmp_path / "kg"), "--split", "0.5,0.5"])
    assert code == 2 and "--split '0.5,0.5'" in capsys.readouterr().err


def test_windows_line_endings_and_gzip(tmp_path: Path) -> None:
    import gzip

    rows = graph()
    import_graph(write(tmp_path / "ref.csv", rows), tmp_path / "ref")
    (tmp_path / "crlf.csv").write_bytes("".join(",".join(r) + "\r\n" for r in rows).encode())
    import_graph(tmp_path / "crlf.csv", tmp_path / "crlf")
    (tmp_path / "g.tsv.gz").write_bytes(gzip.compress("".join("\t".join(r) + "\n" for r in rows).encode()))
    import_graph(tmp_path / "g.tsv.gz", tmp_path / "gz")
    assert triples_of(tmp_path / "crlf") == triples_of(tmp_path / "ref") == triples_of(tmp_path / "gz")


def test_header_with_an_unknown_name_needs_columns(tmp_path: Path) -> None:
    rows = graph()
    import_graph(write(tmp_path / "ref.csv", rows), tmp_path / "ref")
    path = write(tmp_path / "g.csv", rows, header=("subject", "verb", "object"))
    with pytest.raises(DataError) as info:
        import_graph(path, tmp_path / "out")
    assert info.value.line == 1 and "names no relation column" in str(info.value) and "--columns" in str(info.value)
    import_graph(path, tmp_path / "by_role", columns="head,relation,tail")
    import_graph(path, tmp_path / "by_name", columns="subject,verb,object")
    assert triples_of(tmp_path / "by_role") == triples_of(tmp_path / "by_name") == triples_of(tmp_path / "ref")
    with pytest.raises(DataError, match="--columns names 'kind', which the first line"):
        import_graph(path, tmp_path / "bad", columns="subject,kind,object")


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    good_rows = "".join(f"e{i},r{i % 3},e{i + 1}\n" for i in range(5000)).encode()  # past the decoder's read-ahead
    (tmp_path / "g.csv").write_bytes(good_rows + b"caf\xe9,r1,e1\n")
    with pytest.raises(DataError) as info:
        import_graph(tmp_path / "g.csv", tmp_path / "out")
    assert info.value.line == 5001 and "not valid UTF-8" in str(info.value)
