"""IMF (Interactive Multimodal Fusion, Li et al., WWW 2023) for multimodal KG link prediction.

Pure ML: data loading, features, the model, training, evaluation and the checkpoint bundle.
Nothing here imports `service`.
"""

__version__ = "0.1.0"
