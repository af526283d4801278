"""Memory per entity and build time of each index type (one part per branch table, as the
engine builds them) on a scaled bundle of N entities (bench/synthetic.py --scale-from).

    python bench/index_sizes.py 100000 flat,ivf,ivfpq,hnsw

Bytes are the serialized size of the parts (what they hold in memory, within a few KB)."""
import sys, time, json, gc
from pathlib import Path
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO / "bench"))
import numpy as np, torch, faiss
from pathlib import Path
from service.index import CandidateIndex
from model.bundle.format import load_bundle
n = int(sys.argv[1]); kinds = sys.argv[2].split(",")
src = REPO / "bench" / ".cache" / f"scaled-{n}"
if not (src / "manifest.json").exists():
    from synthetic import make_scaled
    make_scaled(REPO / "artifacts" / "default", src, n, overwrite=True)
b = load_bundle(src)
with torch.no_grad():
    tabs = [t.detach().contiguous().numpy() for t in b.model.entity_tables().values()]
out = {"entities": n, "tables_bytes_per_entity": sum(t.shape[1] * t.itemsize for t in tabs), "branches": len(tabs), "dim": tabs[0].shape[1]}
for kind in kinds:
    t0 = time.monotonic(); idx = CandidateIndex.build(tabs, kind); dt = time.monotonic() - t0
    nb = idx.nbytes
    t0 = time.monotonic(); parts = [faiss.deserialize_index(faiss.serialize_index(p)) for p in idx.parts]; lt = time.monotonic() - t0
    out[kind] = {"build_s": round(dt, 1), "bytes": nb, "bytes_per_entity": round(nb / n, 1), "deserialize_s": round(lt, 2)}
    print(kind, out[kind], flush=True)
    del idx, parts; gc.collect()
print(json.dumps(out))
