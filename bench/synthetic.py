"""Large bundles with the IMF architecture, for serving benchmarks at scale.

    python bench/synthetic.py --entities 1000000 --out bench/.cache/synthetic-1m
    python bench/synthetic.py --entities 1000000 --scale-from artifacts/default --out bench/.cache/scaled-1m

Random (default): branches structure, text, numeric, multimodal (like the FB15k-237 model),
d=64; random weights and features (text 32-d, numeric 16-d, 10% of entities lacking numeric),
random known triples (2 per entity). Speed and memory are meaningful on it; candidate recall is
not: random weights give logits with a standard deviation of about 6 around 0, so the sigmoids
of a large share of the entities saturate at 1, the fused top 10 is a near-tie among thousands,
and no logit-space search recovers its order. A trained model looks nothing like that (almost
every entity has a very negative logit, a few are near the decision boundary).

Scaled (`--scale-from BUNDLE`): a trained bundle's model with its entities copied until there
are `--entities`, every copy jittered (Gaussian noise of `--jitter` times each column's standard
deviation on the structure embedding, the projected features and the residuals). The first N
entities are the originals, unchanged, with their names and known triples, so the original test
queries run on it; every decoder, relation and decision weight is the trained one, so the logit
distribution is a trained model's. Each modality's linear projection is folded into the stored
features (identity projection, d-dimensional features), which keeps the bundle small and scores
exactly as the original on the original entities.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.bundle.format import load_bundle, save_bundle  # noqa: E402
from model.kg.dataset import KGDataset  # noqa: E402
from model.network.imf import IMF, IMFConfig  # noqa: E402


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
    return save_bundle(out, model, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={"synthetic": True, "seed": seed}, metrics={}, overwrite=overwrite)


def make_scaled(source: Path, out: Path, entities: int, *, jitter: float = 0.5, seed: int = 0, overwrite: bool = False) -> Path:
    """`source`'s model with its entities copied (and jittered) up to `entities`; see the module doc."""
    src = load_bundle(source)
    m = src.model.eval()
    n, d = m.cfg.num_entities, m.cfg.dim
    if entities < n:
        raise ValueError(f"--entities {entities} is smaller than the source's {n}")
    gen = torch.Generator().manual_seed(seed)
    origin = torch.arange(entities) % n  # (E,) the original each entity copies
    copy = torch.arange(entities) >= n

    def grow(table: Tensor) -> Tensor:
        """(n, d) -> (entities, d): originals unchanged, copies jittered."""
        big = table[origin].float().clone()
        noise = torch.randn(int(copy.sum()), table.shape[1], generator=gen) * (jitter * table.float().std(0))
        big[copy] += noise
        return big

    with torch.no_grad():
        present = {mod: m.present(mod)[origin] for mod in m.modalities}
        if m.cfg.stored_tables:  # a compact bundle: grow its final modality tables directly
            cfg = replace(m.cfg, num_entities=entities)
            big = IMF(cfg, present=present)
            state = {k: v for k, v in m.state_dict().items() if not k.startswith(("table_", "present_", "entity."))}
            missing, unexpected = big.load_state_dict(state, strict=False)
            assert not unexpected, unexpected
            big.entity.weight.copy_(grow(m.entity.weight))
            for mod in m.modalities:
                getattr(big, f"table_{mod}").copy_(grow(m.modality_embeddings(mod)))
            return _save_scaled(src, big, out, entities, jitter, seed, source, overwrite)
        feats = {mod: grow(m.projection[mod](getattr(m, f"features_{mod}").float())) for mod in m.modalities}
        cfg = replace(m.cfg, num_entities=entities, modalities={mod: d for mod in m.modalities})
        big = IMF(cfg, feats, present)
        state = {k: v for k, v in m.state_dict().items() if not k.startswith(("features_", "present_", "entity.", "residual.", "projection."))}
        missing, unexpected = big.load_state_dict(state, strict=False)
        assert not unexpected, unexpected
        big.entity.weight.copy_(grow(m.entity.weight))
        for mod in m.modalities:
            big.projection[mod].weight.copy_(torch.eye(d))
            big.projection[mod].bias.zero_()
            if cfg.feature_residual:
                big.residual[mod].weight.copy_(grow(m.residual[mod].weight))
    return _save_scaled(src, big, out, entities, jitter, seed, source, overwrite)


def _save_scaled(src, big: IMF, out: Path, entities: int, jitter: float, seed: int, source: Path, overwrite: bool) -> Path:
    """Write the grown model `big` of `src` as a bundle with copied names and the same triples."""
    n = len(src.vocab.entity_ids)
    big.eval()
    names = [src.vocab.entity_names[i] if i < n else f"{src.vocab.entity_names[i % n]} (copy {i // n})" for i in range(entities)]
    ids = [src.vocab.entity_ids[i] if i < n else f"{src.vocab.entity_ids[i % n]}~{i // n}" for i in range(entities)]
    ds = KGDataset(
        name=f"scaled-{entities}",
        root=out,
        entity_ids=ids,
        entity_names=names,
        entity_descriptions=[""] * entities,
        relation_ids=src.vocab.relation_ids,
        relation_names=src.vocab.relation_names,
        train=src.triples["train"],
        valid=src.triples["valid"],
        test=src.triples["test"],
        fingerprint=f"scaled-{entities}-{src.fingerprint}-{jitter}-{seed}",
    )
    return save_bundle(out, big, ds.vocabulary(), ds.splits(), dataset=ds.info(), training={"scaled_from": str(source), "jitter": jitter, "seed": seed}, metrics={}, overwrite=overwrite)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scale-from", type=Path, default=None, help="a trained bundle to copy up to --entities (see above)")
    ap.add_argument("--jitter", type=float, default=0.5)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    t0 = time.monotonic()
    if args.scale_from:
        make_scaled(args.scale_from, args.out, args.entities, jitter=args.jitter, overwrite=args.overwrite)
    else:
        make_synthetic(args.out, args.entities, dim=args.dim, overwrite=args.overwrite)
    print(f"wrote {args.out} in {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
