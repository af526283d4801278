"""Converters from the raw public releases of the built-in datasets to the project's format.

`imf data build NAME --source RAW` reads the raw releases (each dataset's `dataset.json` lists
its sources and licences) from the folder RAW and writes `data/NAME/` in the format of `model.kg.dataset`. The results are
committed, so users never need the raw files; this module documents exactly how they were made.

Cleaning, always reported in `dataset.json` under "cleaning":
- duplicate lines inside a split are dropped (raw DB15K repeats triples);
- valid/test triples whose entity or relation never occurs in train are dropped (FB15k-237 has a
  few; the usual practice, since a structure embedding cannot be learned for them);
- valid/test triples that are also training triples are dropped: a model would be scored (and,
  on the validation split, selected) on memorising its training data. The zjukg DB15K split's
  validation file is mostly such triples (6,584 of 7,477); FB15k-237 and WN9-IMG have none;
- valid triples that are also test triples are dropped from valid (test stays as released):
  model selection must not look at test. DB15K's validation file held 820 of its 893
  remaining triples in test; 73 were left, so training triples (seeded, never one train needs
  to hold an entity or relation) were moved to valid until it holds 3,000
  (`valid_moved_from_train` in dataset.json). DB15K's test split is the released one.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.kg.dataset import BUILTIN_DATASETS, project_data_dir
from model.kg.split import repair_splits, top_up_valid
from model.files import atomic_write
from model.errors import DataError, UnknownNameError

log = logging.getLogger(__name__)

Triple = tuple[str, str, str]


@dataclass
class RawKG:
    """A dataset as read from its raw release, before writing: string ids throughout."""

    name: str
    description: str
    splits: dict[str, list[Triple]]
    entity_names: dict[str, str]
    entity_descriptions: dict[str, str]
    relation_names: dict[str, str]
    # None: not written, so that training uses every modality in features/ (an imported graph).
    default_modalities: list[str] | None
    sources: list[str]
    cleaning: dict[str, int] = field(default_factory=dict)
    # Fill valid up to this many triples from train (model.kg.split.top_up_valid); None: as given.
    valid_target: int | None = None
    # Further dataset.json fields (the importer records how it split).
    extra: dict[str, Any] = field(default_factory=dict)


def _clean(raw: RawKG) -> RawKG:
    """Make the release's splits honest (model.kg.split.repair_splits: duplicates, unseen
    entities and relations, valid/test triples in train, valid triples in test), then, where
    the release's validation split is too small for model selection, move training triples to it
    (`valid_target`, never a triple train needs for coverage)."""
    raw.splits, report = repair_splits(raw.splits)
    raw.cleaning.update(report)
    if raw.valid_target is not None:
        raw.splits, moved = top_up_valid(raw.splits, raw.valid_target, seed=0)
        raw.cleaning["valid_moved_from_train"] = moved
    return raw


def entity_order(raw: RawKG) -> list[str]:
    """Entities in order of first appearance over train, valid, test (the usual convention)."""
    order: dict[str, None] = {}
    for split in ("train", "valid", "test"):
        for h, _, t in raw.splits[split]:
            order.setdefault(h)
            order.setdefault(t)
    return list(order)


def _tsv_field(text: str) -> str:
    """Tabs and newlines would break the TSV columns."""
    return re.sub(r"[\t\r\n]+", " ", text).strip()


def write_lines(path: Path, lines: Iterable[str]) -> None:
    """`lines` as a UTF-8 file (gzip when `path` ends in .gz), one a line, written atomically."""

    def write(tmp: Path) -> None:
        if path.suffix == ".gz":
            # mtime=0 and no stored file name keep the committed file byte-identical across rebuilds.
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
                gz.write("".join(f"{line}\n" for line in lines).encode("utf-8"))
        else:
            tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    atomic_write((path, write))


def write_dataset(raw: RawKG, out: Path, *, gzip_threshold: int = 2_000_000, clean: bool = True) -> dict[str, Any]:
    """Write `raw` (cleaned) into `out` in the project format; the features/ folder is kept.

    clean=False: the splits are honest already (the importer, model.kg.importer, splits or
    repairs them itself and reports how). Returns what was written to dataset.json.
    """
    if clean:
        raw = _clean(raw)
    out.mkdir(parents=True, exist_ok=True)
    entities = entity_order(raw)
    relations = list(dict.fromkeys(r for _, r, _ in raw.splits["train"]))
    write_lines(
        out / "entities.tsv",
        (f"{e}\t{_tsv_field(raw.entity_names.get(e, e)) or e}\t{_tsv_field(raw.entity_descriptions.get(e, ''))}" for e in entities),
    )
    write_lines(out / "relations.tsv", (f"{r}\t{_tsv_field(raw.relation_names.get(r, r)) or r}" for r in relations))
    for split, triples in raw.splits.items():
        lines = [f"{h}\t{r}\t{t}" for h, r, t in triples]
        size = sum(len(x) + 1 for x in lines)
        target = out / (f"{split}.tsv.gz" if size > gzip_threshold else f"{split}.tsv")
        other = out / (f"{split}.tsv" if target.suffix == ".gz" else f"{split}.tsv.gz")
        write_lines(target, lines)
        other.unlink(missing_ok=True)
    meta: dict[str, Any] = {
        "name": raw.name,
        "description": raw.description,
        **({"default_modalities": raw.default_modalities} if raw.default_modalities is not None else {}),
        "sources": raw.sources,
        "counts": {
            "entities": len(entities),
            "relations": len(relations),
            **{split: len(t) for split, t in raw.splits.items()},
        },
        "cleaning": raw.cleaning,
        **raw.extra,
    }
    write_lines(out / "dataset.json", [json.dumps(meta, indent=2, ensure_ascii=False)])
    return meta


# --------------------------------------------------------------------------------------------
# The three built-in datasets
# --------------------------------------------------------------------------------------------


def _label(entry: dict) -> str:
    """A Wikidata label, or "" when it is missing or only the item's Q-id (no English label)."""
    label = (entry.get("label") or "").strip()
    return "" if re.fullmatch(r"Q\d+", label) else label


def _read_wikidata(path: Path) -> dict[str, dict]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_fb15k_237(src: Path) -> RawKG:
    """FB15k-237 (Toutanova & Chen 2015) from ConvE's tarball; names from Wikidata labels."""
    base = src / "FB15k-237"
    splits: dict[str, list[Triple]] = {}
    with tarfile.open(base / "FB15k-237.tar.gz") as tar:
        for split in ("train", "valid", "test"):
            member = tar.extractfile(f"{split}.txt")
            if member is None:
                raise DataError(base / "FB15k-237.tar.gz", f"no member {split}.txt")
            triples = []
            for lineno, line in enumerate(member.read().decode("utf-8").splitlines(), start=1):
                cols = line.strip("\r\n").split("\t")
                if len(cols) != 3:
                    raise DataError(base / f"FB15k-237.tar.gz:{split}.txt", f"expected 3 columns, found {len(cols)}", lineno)
                triples.append((cols[0], cols[1], cols[2]))
            splits[split] = triples
    wiki = _read_wikidata(base / "entity2wikidata.json")
    text_names = dict(line.split("\t", 1) for line in (base / "entity2text.txt").read_text(encoding="utf-8").splitlines() if "\t" in line)
    names = {}
    descs = {}
    for mid in set(text_names) | set(wiki):
        w = wiki.get(mid) or {}
        names[mid] = (_label(w) or text_names.get(mid) or mid).strip()
        descs[mid] = (w.get("description") or "").strip()
    rel_names = {}
    for line in (base / "relation2text.txt").read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            rel, words = line.split("\t", 1)
            rel_names[rel] = words.strip()
    return RawKG(
        name="fb15k-237",
        description="FB15k-237 (Toutanova & Chen 2015), Freebase; ConvE's release of the split.",
        splits=splits,
        entity_names=names,
        entity_descriptions=descs,
        relation_names=rel_names,
        default_modalities=["text", "numeric"],
        sources=[
            "TimDettmers/ConvE FB15k-237.tar.gz (MIT)",
            "villmow/datasets_knowledge_embedding entity2wikidata.json (MIT): names, descriptions",
            "yao8839836/kg-bert entity2text.txt, relation2text.txt (Apache-2.0): fallback names",
            "mniepert/mmkb FB15K_NumericalTriples.txt (BSD-3-Clause): numeric features",
            "wangmengsd/RSME img_data/fb15k (10 entities): visual features only, images not included",
        ],
    )


_DB_PREFIXES = {
    "http://dbpedia.org/ontology/": "dbo:",
    "http://www.w3.org/2000/01/rdf-schema#": "rdfs:",
    "http://www.w3.org/2002/07/owl#": "owl:",
    "http://www.w3.org/1999/02/22-rdf-syntax-ns#": "rdf:",
    "http://xmlns.com/foaf/0.1/": "foaf:",
    "http://purl.org/dc/elements/1.1/": "dc:",
}


def _db_relation_id(uri: str) -> str:
    bare = uri.strip("<>")
    for long, short in _DB_PREFIXES.items():
        if bare.startswith(long):
            return short + bare[len(long):]
    return bare


def _words(camel: str) -> str:
    """'birthPlace' -> 'birth place'."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", camel).replace("_", " ").lower()


def read_db15k(src: Path) -> RawKG:
    """DB15K (Liu et al. 2019) in the split of MyGO / NativE / AdaMF-MAT (zjukg); names and
    descriptions joined through IMF's entity2fb.txt to FB15k-237's Wikidata file."""
    base = src / "DB15K"
    z = base / "zjukg_split"

    def id_map(path: Path) -> dict[int, str]:
        lines = path.read_text(encoding="utf-8").splitlines()
        out = {}
        for lineno, line in enumerate(lines[1:], start=2):
            key, _, idx = line.rpartition(" ")
            if not key:
                raise DataError(path, "expected '<uri> id'", lineno)
            out[int(idx)] = key
        return out

    ents = id_map(z / "entity2id.txt")
    rels = id_map(z / "relation2id.txt")

    def ent_id(uri: str) -> str:
        return uri.strip("<>").removeprefix("http://dbpedia.org/resource/")

    splits: dict[str, list[Triple]] = {}
    for split, fname in (("train", "train2id.txt"), ("valid", "valid2id.txt"), ("test", "test2id.txt")):
        triples = []
        lines = (z / fname).read_text(encoding="utf-8").splitlines()
        for lineno, line in enumerate(lines[1:], start=2):
            cols = line.split()
            if len(cols) != 3:
                raise DataError(z / fname, f"expected 'head tail relation', found {len(cols)} fields", lineno)
            h, t, r = (int(c) for c in cols)  # OpenKE order: head tail relation
            triples.append((ent_id(ents[h]), _db_relation_id(rels[r]), ent_id(ents[t])))
        splits[split] = triples
    wiki = _read_wikidata(src / "FB15k-237" / "entity2wikidata.json")
    names: dict[str, str] = {}
    descs: dict[str, str] = {}
    for line in (base / "imf_split" / "entity2fb.txt").read_text(encoding="utf-8").splitlines():
        uri, mid, _ = line.split(" ")
        key = ent_id(uri)
        w = wiki.get(mid) or {}
        names[key] = (_label(w) or key.replace("_", " ")).strip()
        descs[key] = (w.get("description") or "").strip()
    rel_names = {}
    for rel in rels.values():
        rid = _db_relation_id(rel)
        rel_names[rid] = _words(rid.split(":", 1)[-1])
    return RawKG(
        name="db15k",
        description="DB15K (Liu et al. 2019, MMKG), DBpedia; the split used by MyGO, NativE, AdaMF-MAT, MoMoK.",
        splits=splits,
        entity_names=names,
        entity_descriptions=descs,
        relation_names=rel_names,
        default_modalities=["text"],
        sources=[
            "zjukg/NATIVE benchmarks/DB15K (train2id/valid2id/test2id, entity2id, relation2id)",
            "HestiaSky/IMF-Pytorch dataset/DB15K/entity2fb.txt (MIT): DBpedia -> Freebase join",
            "villmow/datasets_knowledge_embedding entity2wikidata.json (MIT): names, descriptions",
        ],
        # The release's validation split is nearly all training or test triples (6,584 and
        # 820 of 7,477): 73 remain, too few to select a model on; 2,927 training triples join them.
        valid_target=3000,
    )


def read_wn9_img(src: Path) -> RawKG:
    """WN9-IMG (Xie et al. 2017, IKRL); glosses from KG-BERT's WN18RR entity2text."""
    base = src / "WN9-IMG"
    splits: dict[str, list[Triple]] = {}
    for split in ("train", "valid", "test"):
        triples = []
        for lineno, line in enumerate((base / f"{split}.txt").read_text(encoding="utf-8").splitlines(), start=1):
            cols = line.split("\t")
            if len(cols) != 3:
                raise DataError(base / f"{split}.txt", f"expected 3 columns, found {len(cols)}", lineno)
            h, t, r = cols  # IKRL order: head tail relation
            triples.append((h, r, t))
        splits[split] = triples
    names = {}
    descs = {}
    for line in (base / "entity2text.txt").read_text(encoding="utf-8").splitlines():
        wnid, text = line.split("\t", 1)
        lemma, _, gloss = text.partition(", ")
        names[wnid] = lemma.strip()
        descs[wnid] = gloss.strip()
    rel_names = {}
    for line in (base / "relation2id.txt").read_text(encoding="utf-8").splitlines():
        rel = line.split("\t")[0]
        rel_names[rel] = rel.strip("_").replace("_", " ")
    return RawKG(
        name="wn9-img",
        description="WN9-IMG (Xie et al. 2017, IKRL), WordNet; glosses from KG-BERT's WN18RR entity2text.",
        splits=splits,
        entity_names=names,
        entity_descriptions=descs,
        relation_names=rel_names,
        default_modalities=["text", "visual"],
        sources=[
            "thunlp/IKRL data.rar (MIT): triples",
            "yao8839836/kg-bert data/WN18RR/entity2text.txt (Apache-2.0): lemmas and glosses",
            "EliSchwartz/imagenet-sample-images + wangmengsd/RSME (409 entities): visual features only, images not included",
        ],
    )


READERS: dict[str, Callable[[Path], RawKG]] = {
    "fb15k-237": read_fb15k_237,
    "db15k": read_db15k,
    "wn9-img": read_wn9_img,
}
assert set(READERS) == set(BUILTIN_DATASETS)


def default_source_dir() -> Path:
    """$IMF_SHARED_DATASETS, else a `shared/datasets` folder beside the checkout (the project's
    build machines keep the raw releases there; users never need them)."""
    return Path(os.environ.get("IMF_SHARED_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))


def build_builtin(name: str, source: Path | None = None, out: Path | None = None) -> Path:
    """Convert the raw release of built-in dataset `name` into `out` (default data/NAME)."""
    if name not in READERS:
        raise UnknownNameError("dataset", name, READERS, list_known=True)
    source = source or default_source_dir()
    if not source.is_dir():
        raise DataError(source, "raw dataset folder not found (pass --source)")
    out = out or project_data_dir() / name
    meta = write_dataset(READERS[name](source), out)
    log.info("wrote %s: %s", out, meta["counts"])
    return out
