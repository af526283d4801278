"""A synthetic bundle with the IMF architecture at any size (random weights), for serving benchmarks.

    python bench/synthetic.py --entities 1000000 --out bench/.cache/synthetic-1m

Branches structure, text, numeric, multimodal (like the FB15k-237 model), d=64 by default;
random features (text 32-d, numeric 16-d, with 10% of entities lacking numeric), random known
triples (2 per entity) so the known-fact filter has work to do. Only speed, memory and candidate
recall are meaningful on it; its predictions are noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.bundle import save_bundle  # noqa: E402
from model.data import KGDataset  # noqa: E402
from model.imf import IMF, IMFConfig  # noqa: E402


def make_synthetic(out: Path, entities: int, *, relations: int = 237, dim: int = 64, triples_per_entity: int = 2, seed: int = 0, overwrite: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    mods = {"text": 32, "numeric": 16}
    feats = {m: torch.from_numpy(rng.standard_normal((entities, f), dtype=np.float32)) for m, f in mods.items()}
    present = {"text": torch.ones(entities, dtype=torch.bool), "numeric": torch.from_numpy(rng.random(entities) > 0.1)}
    model = IMF(IMFConfig(num_entities=entities, num_relations=relations, modalities=mods, dim=dim, relation_dim=dim), feats, present)
    with torch.no_grad():  # give the BN layers and weights non-trivial values
        for dec in model.decoders.values():
            dec.bn0.running_var.uniform_(0.5, 2.0)
            dec.bn1.running_var.fill_(float(dim) * 0.1)
        model.relation_alpha.weight.normal_(0, 0.5)
        for emb in [model.entity, *model.residual.values()]:
            emb.weight.normal_(0, 0.3)
    model.eval()
    n = entities * triples_per_entity
    triples = np.stack([rng.integers(0, entities, n), rng.integers(0, relations, n), rng.integers(0, entities, n)], axis=1)
    triples = np.unique(triples, axis=0)
    rng.shuffle(triples)
    ds = KGDataset(
        name=f"synthetic-{entities}",
        root=out,
        entity_ids=[f"e{i}" for i in range(entities)],
        entity_names=[f"entity {i}" for i in range(entities)],
        entity_descriptions=[""] * entities,
        relation_ids=[f"r{i}" for i in range(relations)],
        relation_names=[f"relation {i}" for i in range(relations)],
        train=triples[: len(triples) - 2000],
        valid=triples[len(triples) - 2000: len(triples) - 1000],
        test=triples[len(triples) - 1000:],
        fingerprint=f"synthetic-{entities}-{seed}",
    )
    return save_bundle(out, model, ds, training={"synthetic": True, "seed": seed}, metrics={}, overwrite=overwrite)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    t0 = time.monotonic()
    make_synthetic(args.out, args.entities, dim=args.dim, overwrite=args.overwrite)
    print(f"wrote {args.out} in {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
