"""Offline feature encoders: turn raw side information into the frozen per-entity feature files
of `model.kg.dataset` (``features/<modality>.npy`` + ``.ids.txt``).

IMF never trains its encoders: each modality is encoded once, offline, into a fixed vector per
entity, and the model learns only projections of those vectors. An entity with nothing usable
for a modality is simply not listed, and the model gives it a learned "missing" vector instead.

- `model.features.text` (384-d): ``"name: description"`` (or the name alone), all-MiniLM-L6-v2.
- `model.features.visual` (1280-d): EfficientNet-Lite0 pooled features, averaged per entity.
- `model.features.numeric` (2 * attributes): sign-log1p, z-scored, clipped, presence bits; the
  one home of that transform (new entities are normalised with it too).
- `model.features.store`: the atomic, validated writer the three share.

The encoders come from the optional ``features`` extra (bundled weights, no downloads) and are
imported inside the functions that need them, so training and serving never do.
"""
