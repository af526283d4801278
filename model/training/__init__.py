"""Training: the hyperparameters (`config`, the source of `imf train`'s options) and the loop
(`loop`: 1-N scoring, early stopping on the validation split, continuing from a bundle)."""
