"""The compact encoding of a model's weights for serving: int8 entity tables and decoder cores
with one float16 scale per row, every other float tensor float16: a bundle about 4x smaller
than float32, at a cost in MRR that `model.pipeline.compact_bundle` measures and records in the
manifest (docs/benchmarks.md section 1 has the shipped model's)."""

from __future__ import annotations

import torch

from model.errors import BundleError
from model.network.imf import IMF

SCALE_SUFFIX = ".__row_scale__"  # companion tensor of an int8-quantised table


def encode_state(state: dict[str, torch.Tensor], num_entities: int) -> tuple[dict[str, torch.Tensor], dict]:
    """A compact encoding of a state dict: every entity table (a float tensor of shape (N, d),
    N = num_entities) and every decoder core tensor W_b (d_r, d, d) as int8 with one float16
    scale per row of the last dimension (symmetric, round to nearest), every other float tensor
    as float16, integer and bool tensors unchanged.

    Returns (tensors, encoding); `decode_state(tensors, encoding)` inverts it up to rounding.
    The int8 tables and cores are nearly all of a bundle's size: 4x smaller than float32.
    """
    out: dict[str, torch.Tensor] = {}
    quantized = []
    for key, v in state.items():
        v = v.detach().cpu()
        table = v.dim() == 2 and v.shape[0] == num_entities
        core = v.dim() == 3 and key.endswith(".core")
        if v.is_floating_point() and (table or core):
            scale = (v.abs().amax(dim=-1, keepdim=True).float() / 127.0).clamp(min=1e-12)
            out[key] = torch.round(v.float() / scale).clamp(-127, 127).to(torch.int8).contiguous()
            out[key + SCALE_SUFFIX] = scale.to(torch.float16).contiguous()
            quantized.append(key)
        elif v.is_floating_point():
            out[key] = v.to(torch.float16).contiguous()
        else:
            out[key] = v.contiguous()
    return out, {"float": "float16", "int8_rows": quantized}


def decode_state(tensors: dict[str, torch.Tensor], encoding: dict | None, *, source: str = "weights.safetensors") -> dict[str, torch.Tensor]:
    """The state dict of `encode_state`'s output, float tensors as float32. encoding None: as
    stored. source: the file named in a BundleError."""
    if not encoding:
        return tensors
    quantized = set(encoding.get("int8_rows", []))
    state = {}
    for key, v in tensors.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        if key in quantized:
            scale = tensors.get(key + SCALE_SUFFIX)
            if scale is None:
                raise BundleError(f"{source}: quantised tensor {key!r} has no scale")
            state[key] = v.float() * scale.float()
        elif v.is_floating_point():
            state[key] = v.float()
        else:
            state[key] = v
    return state


def as_served(model: IMF) -> IMF:
    """The compacted model with exactly the weights a compact bundle will hold (int8 tables and
    float16 round trip), in eval mode: what its metrics must be measured on."""
    compact = model.compacted()
    state, encoding = encode_state(compact.state_dict(), compact.cfg.num_entities)
    compact.load_state_dict(decode_state(state, encoding))
    return compact.eval()
