"""Converting LoRA files between the diffusers and kohya key layouts (any Flux size, exact)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loraflow.trainer.lora_format import (
    FluxDims,
    diffusers_modules,
    from_kohya_layout,
    to_diffusers_layout,
    to_kohya_layout,
)


def detect_layout(keys: list[str]) -> str:
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "diffusers"
    raise ValueError("not a Flux LoRA in kohya or diffusers layout")


def dims_from_modules(modules: dict[str, dict[str, torch.Tensor]]) -> FluxDims:
    inner = mlp = None
    for name, parts in modules.items():
        out = parts["B"].shape[0]
        if name.endswith(("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")):
            inner = out
        if name.endswith(("proj_mlp", "ff.net.0.proj")):
            mlp = out
    if inner is None:
        raise ValueError("cannot tell the model width from this LoRA (no attention modules)")
    return FluxDims(inner=inner, mlp=mlp or inner * 4)


def dims_from_kohya(state: dict[str, torch.Tensor]) -> FluxDims:
    """Widths from a kohya file: fused qkv / linear1 take the hidden width as input, and linear1's output is
    three times that plus the MLP width."""
    inner = mlp = None
    for key, tensor in state.items():
        if key.endswith(("_attn_qkv.lora_down.weight", "_linear1.lora_down.weight", "_attn_proj.lora_up.weight")):
            inner = tensor.shape[1] if key.endswith("lora_down.weight") else tensor.shape[0]
    for key, tensor in state.items():
        if inner and key.endswith("_linear1.lora_up.weight"):
            mlp = tensor.shape[0] - 3 * inner
        elif key.endswith("_img_mlp_0.lora_up.weight"):
            mlp = tensor.shape[0]
    if inner is None:
        raise ValueError("cannot tell the model width from this LoRA")
    return FluxDims(inner=inner, mlp=mlp or inner * 4)


def convert_state(
    state: dict[str, torch.Tensor], to: str, default_alpha: float | None = None
) -> dict[str, torch.Tensor]:
    """Convert a state dict to `to` ('kohya' or 'diffusers')."""
    if detect_layout(list(state)) == "kohya":
        modules = from_kohya_layout(state, dims_from_kohya(state))
    else:
        modules = diffusers_modules(state, default_alpha)
    if to == "kohya":
        return to_kohya_layout(modules, dims_from_modules(modules))
    return to_diffusers_layout(modules)


def convert_file(src: Path, dest: Path, to: str) -> None:
    with safe_open(str(src), "pt") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    dtype = next(iter(state.values())).dtype
    out = convert_state(state, to)
    out = {k: (v.float() if k.endswith(".alpha") else v.to(dtype)).contiguous() for k, v in out.items()}
    metadata = {**metadata, "loraflow.format": to}
    metadata.pop("lora_adapter_metadata", None)  # alpha now lives in the keys; both together break diffusers
    tmp = dest.with_name(dest.name + ".partial")
    save_file(out, tmp, metadata=metadata)
    tmp.replace(dest)
