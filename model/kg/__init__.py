"""The knowledge graph: the on-disk dataset format and its strict loader (`dataset`), the
known-answer index every layer filters with (`triples`), the vocabulary with its name lookups
(`vocab`, `names`), and the converters of the built-in datasets' raw releases (`builtin`)."""
