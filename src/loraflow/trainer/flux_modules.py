"""Flux's LoRA module names, by block kind, and how kohya's fused modules split into diffusers' (no torch:
the result check reads them on machines without it)."""

from __future__ import annotations

ATTENTION = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
]
MLP = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
MODULATION = ["norm1.linear", "norm1_context.linear"]
SINGLE_ATTENTION = ["attn.to_q", "attn.to_k", "attn.to_v"]
SINGLE_MLP = ["proj_mlp", "proj_out"]


DOUBLE_MAP: dict[str, list[str]] = {
    "img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "img_attn_proj": ["attn.to_out.0"],
    "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "txt_attn_proj": ["attn.to_add_out"],
    "img_mlp_0": ["ff.net.0.proj"],
    "img_mlp_2": ["ff.net.2"],
    "txt_mlp_0": ["ff_context.net.0.proj"],
    "txt_mlp_2": ["ff_context.net.2"],
    "img_mod_lin": ["norm1.linear"],
    "txt_mod_lin": ["norm1_context.linear"],
}
SINGLE_MAP: dict[str, list[str]] = {
    "linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
    "linear2": ["proj_out"],
    "modulation_lin": ["norm.linear"],
}

