"""The network: IMF itself (`imf`: modality encoders, bilinear fusion, TuckER decoders, decision
fusion) and its training losses (`losses`). Pure PyTorch; knows no files."""
