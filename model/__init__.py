"""IMF (Interactive Multimodal Fusion, Li et al., WWW 2023) for multimodal KG link prediction.

Pure ML, in layers (each imports only from those before it; docs/architecture.md):
`errors`, `files`, `config` -> `kg` (the graph: format, known answers, vocabulary) ->
`features` (offline encoders) -> `network` (IMF, losses) -> `evaluation` (filtered ranking,
top-k) -> `bundle` (the checkpoint and its extras) -> `training` -> `pipeline` -> `cli`.
Nothing here imports `service`.
"""

__version__ = "0.1.0"
