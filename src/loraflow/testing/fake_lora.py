"""Small random LoRA tensors in ai-toolkit (diffusers) and kohya layouts, for the engine stand-ins.

Keyed as the real engines key FLUX.1 (19 double and 38 single blocks, every module the `default` target
preset names) so they pass the result check honestly, but only 32 wide so they cost nothing to write.
A trained LoRA's B matrices are small and non-zero; `inert=True` writes them as a trainer that never
stepped leaves them: all zero (what the result check must refuse as lora_inert).
"""

from __future__ import annotations

import torch

from loraflow.trainer.lora_format import (
    ATTENTION,
    MLP,
    SINGLE_ATTENTION,
    SINGLE_MLP,
    FluxDims,
    diffusers_modules,
    to_kohya_layout,
)

DIMS = FluxDims(inner=32, mlp=128)
DOUBLE = ATTENTION + MLP
SINGLE = SINGLE_ATTENTION + SINGLE_MLP
FLUX1_BLOCKS = (19, 38)  # FLUX.1 [dev] and [schnell]: num_layers, num_single_layers


def _shape(module: str, rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    inner, mlp = DIMS.inner, DIMS.mlp
    out = mlp if module.endswith(("proj_mlp", "net.0.proj")) else inner
    inp = inner + mlp if module.endswith("proj_out") else (mlp if module.endswith("net.2") else inner)
    return (rank, inp), (out, rank)


def diffusers_lora(
    rank: int,
    seed: int,
    dtype: torch.dtype = torch.float16,
    blocks: tuple[int, int] = FLUX1_BLOCKS,
    inert: bool = False,
) -> dict[str, torch.Tensor]:
    """What ai-toolkit saves for Flux: transformer.<module>.lora_A/B, no alpha keys (alpha = rank)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    streams = (("transformer_blocks", DOUBLE, blocks[0]), ("single_transformer_blocks", SINGLE, blocks[1]))
    for prefix, names, count in streams:
        for i in range(count):
            for name in names:
                a, b = _shape(name, rank)
                up = torch.zeros(b) if inert else torch.randn(b, generator=gen) * 0.01
                out[f"transformer.{prefix}.{i}.{name}.lora_A.weight"] = torch.randn(a, generator=gen).to(dtype)
                out[f"transformer.{prefix}.{i}.{name}.lora_B.weight"] = up.to(dtype)
    return out


def kohya_lora(rank: int, alpha: float, seed: int, inert: bool = False) -> dict[str, torch.Tensor]:
    state = diffusers_lora(rank, seed, torch.float32, inert=inert)
    kohya = to_kohya_layout(diffusers_modules(state, alpha), DIMS)
    return {k: (v if k.endswith(".alpha") else v.to(torch.bfloat16)) for k, v in kohya.items()}


def wan_comfy_lora(rank: int, seed: int, blocks: int = 40) -> dict[str, torch.Tensor]:
    """A Wan 14B expert's LoRA as ai-toolkit saves it for ComfyUI: `diffusion_model.blocks.N.<module>.lora_A/B`
    over every block's attention and MLP Linears, 16 wide (64 in the MLP) so it costs nothing."""
    from loraflow.lora_check.keys import WAN_ATTENTION, WAN_MLP

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(blocks):
        for module in WAN_ATTENTION + WAN_MLP:
            width_in, width_out = (64, 16) if module == "ffn.2" else ((16, 64) if module == "ffn.0" else (16, 16))
            key = f"diffusion_model.blocks.{i}.{module}"
            out[f"{key}.lora_A.weight"] = torch.randn(rank, width_in, generator=gen).to(torch.bfloat16)
            out[f"{key}.lora_B.weight"] = (torch.randn(width_out, rank, generator=gen) * 0.01).to(torch.bfloat16)
    return out
