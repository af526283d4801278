"""The checkpoint bundle: the on-disk format (`format`: write, verify, load), the compact weight
encoding (`quantize`), and the optional extras fitted after training: the probability
calibration (`calibration`) and the feature map that embeds new entities (`feature_map`)."""
