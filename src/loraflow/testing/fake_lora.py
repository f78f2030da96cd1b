"""Small random LoRA tensors in ai-toolkit (diffusers) and kohya layouts, for the engine stand-ins."""

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


def _shape(module: str, rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    inner, mlp = DIMS.inner, DIMS.mlp
    out = mlp if module.endswith(("proj_mlp", "net.0.proj")) else inner
    inp = inner + mlp if module.endswith("proj_out") else (mlp if module.endswith("net.2") else inner)
    return (rank, inp), (out, rank)


def diffusers_lora(rank: int, seed: int, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """What ai-toolkit saves for Flux: transformer.<module>.lora_A/B, no alpha keys (alpha = rank)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, names in (("transformer_blocks", DOUBLE), ("single_transformer_blocks", SINGLE)):
        for i in range(2):
            for name in names:
                a, b = _shape(name, rank)
                out[f"transformer.{prefix}.{i}.{name}.lora_A.weight"] = torch.randn(a, generator=gen).to(dtype)
                out[f"transformer.{prefix}.{i}.{name}.lora_B.weight"] = (torch.randn(b, generator=gen) * 0.01).to(dtype)
    return out


def kohya_lora(rank: int, alpha: float, seed: int) -> dict[str, torch.Tensor]:
    state = diffusers_lora(rank, seed, torch.float32)
    kohya = to_kohya_layout(diffusers_modules(state, alpha), DIMS)
    return {k: (v if k.endswith(".alpha") else v.to(torch.bfloat16)) for k, v in kohya.items()}
