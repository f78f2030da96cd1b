"""LoRA files for Flux: which modules get LoRA, and the two key layouts every loader understands.

- diffusers/peft layout: `transformer.<module>.lora_A.weight` / `lora_B.weight`, plus a per-module
  `<module>.alpha` key (never the `lora_adapter_metadata` header as well: diffusers refuses both).
  diffusers, ComfyUI and Forge all apply alpha/rank from those keys, so the trained strength holds.
- kohya/ComfyUI layout (default): `lora_unet_<bfl module>.lora_down/lora_up/alpha` with Flux's fused
  modules (img/txt qkv, single-block linear1). The conversion is exact for any depth and width: fused
  `lora_down` is the parts' A stacked, `lora_up` is block-diagonal, alpha is n x lora_alpha.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from loraflow.trainer.flux_modules import (
    ATTENTION,
    DOUBLE_MAP,
    MLP,
    MODULATION,
    SINGLE_ATTENTION,
    SINGLE_MAP,
    SINGLE_MLP,
)


def target_regex(preset: str | list[str]) -> str | list[str]:
    """peft target_modules: a full-name regex for presets (so the top-level proj_out is never hit)."""
    if isinstance(preset, list):
        return preset
    double, single = list(ATTENTION), list(SINGLE_ATTENTION)
    if preset in ("default", "all"):
        double += MLP
        single += SINGLE_MLP
    if preset == "all":
        double += MODULATION
        single += ["norm.linear"]

    def alt(names: list[str]) -> str:
        return "|".join(re.escape(n) for n in names)

    return rf"^(transformer_blocks\.\d+\.({alt(double)})|single_transformer_blocks\.\d+\.({alt(single)}))$"


# --- diffusers <-> kohya key mapping ------------------------------------------------------------

@dataclass(frozen=True)
class FluxDims:
    """Output widths of the parts of Flux's fused modules (q, k, v: inner; proj_mlp: mlp), needed to split a
    fused kohya module and to zero-fill a part that was not trained."""

    inner: int  # heads x head_dim
    mlp: int  # inner x mlp_ratio

    @classmethod
    def from_config(cls, config: dict) -> FluxDims:
        inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        return cls(inner=inner, mlp=int(inner * float(config.get("mlp_ratio", 4.0))))

    def out_features(self, module: str) -> int:
        return self.mlp if module == "proj_mlp" else self.inner


def _split_module(key: str) -> tuple[str, str]:
    """'transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight' -> (module path, suffix)."""
    key = key.removeprefix("transformer.")
    for suffix in (".lora_A.weight", ".lora_B.weight", ".alpha"):
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    raise ValueError(f"not a LoRA key: {key}")


def diffusers_modules(
    state: dict[str, torch.Tensor], default_alpha: float | None
) -> dict[str, dict[str, torch.Tensor]]:
    """Group a diffusers-layout state dict by module: {module: {A, B, alpha}}. A module with no alpha key
    gets `default_alpha`, or its rank when that is None (what diffusers and ai-toolkit assume)."""
    names = {".lora_A.weight": "A", ".lora_B.weight": "B", ".alpha": "alpha"}
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, suffix = _split_module(key)
        modules.setdefault(module, {})[names[suffix]] = tensor
    for parts in modules.values():
        alpha = default_alpha if default_alpha is not None else parts["A"].shape[0]
        parts.setdefault("alpha", torch.tensor(float(alpha)))
    return modules


def to_diffusers_layout(modules: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for module, parts in sorted(modules.items()):
        out[f"transformer.{module}.lora_A.weight"] = parts["A"].contiguous()
        out[f"transformer.{module}.lora_B.weight"] = parts["B"].contiguous()
        out[f"transformer.{module}.alpha"] = parts["alpha"].reshape(()).float()
    return out


def _blocks(modules: dict[str, dict[str, torch.Tensor]], prefix: str) -> list[int]:
    return sorted({int(m.split(".")[1]) for m in modules if m.startswith(prefix + ".")})


def to_kohya_layout(modules: dict[str, dict[str, torch.Tensor]], dims: FluxDims) -> dict[str, torch.Tensor]:
    """Exact diffusers -> kohya conversion; missing parts of a fused module are zero-filled."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for prefix, bfl, mapping in (
        ("transformer_blocks", "double_blocks", DOUBLE_MAP),
        ("single_transformer_blocks", "single_blocks", SINGLE_MAP),
    ):
        for i in _blocks(modules, prefix):
            for kohya_name, parts in mapping.items():
                present = [p for p in parts if f"{prefix}.{i}.{p}" in modules]
                if not present:
                    continue
                first = modules[f"{prefix}.{i}.{present[0]}"]
                rank, in_features = first["A"].shape
                scale = float(first["alpha"]) / rank
                downs, ups = [], []
                for part in parts:
                    name = f"{prefix}.{i}.{part}"
                    if name in modules:
                        m = modules[name]
                        if m["A"].shape[0] != rank or abs(float(m["alpha"]) / rank - scale) > 1e-9:
                            raise ValueError(f"{name}: fused parts must share rank and alpha")
                        downs.append(m["A"])
                        ups.append(m["B"])
                        used.add(name)
                    else:
                        downs.append(first["A"].new_zeros(rank, in_features))
                        ups.append(first["B"].new_zeros(dims.out_features(part), rank))
                key = f"lora_unet_{bfl}_{i}_{kohya_name}"
                out[f"{key}.lora_down.weight"] = torch.cat(downs, dim=0).contiguous()
                out[f"{key}.lora_up.weight"] = torch.block_diag(*ups).contiguous()
                out[f"{key}.alpha"] = torch.tensor(scale * rank * len(parts), dtype=torch.float32)
    leftover = set(modules) - used
    if leftover:
        raise ValueError(f"modules with no kohya equivalent: {sorted(leftover)[:5]}")
    return out


def from_kohya_layout(state: dict[str, torch.Tensor], dims: FluxDims) -> dict[str, dict[str, torch.Tensor]]:
    """Exact kohya -> diffusers conversion. Block-diagonal fused ups split back to the parts' own rank;
    a dense fused up (a LoRA trained by kohya itself) gives each part the shared down and its up rows.
    All-zero parts (zero-filled on export) are dropped."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    pattern = re.compile(r"^lora_unet_(double_blocks|single_blocks)_(\d+)_(.+)\.lora_down\.weight$")
    for key in state:
        match = pattern.match(key)
        if not match:
            continue
        kind, index, name = match.group(1), int(match.group(2)), match.group(3)
        mapping, prefix = (
            (DOUBLE_MAP, "transformer_blocks") if kind == "double_blocks" else (SINGLE_MAP, "single_transformer_blocks")
        )
        if name not in mapping:
            raise ValueError(f"unknown kohya module {key}")
        base = key.removesuffix(".lora_down.weight")
        down, up = state[key], state[f"{base}.lora_up.weight"]
        total_rank = down.shape[0]
        alpha = float(state.get(f"{base}.alpha", torch.tensor(float(total_rank))))
        parts = mapping[name]
        n = len(parts)
        widths = [dims.out_features(p) for p in parts] if n > 1 else [up.shape[0]]
        rows = torch.split(up, widths, dim=0)
        block_diag = total_rank % n == 0 and all(
            torch.count_nonzero(torch.cat([r[:, : j * (total_rank // n)], r[:, (j + 1) * (total_rank // n) :]], 1)) == 0
            for j, r in enumerate(rows)
        )
        for j, part in enumerate(parts):
            if block_diag and n > 1:
                r = total_rank // n
                a, b = down[j * r : (j + 1) * r], rows[j][:, j * r : (j + 1) * r]
                part_alpha = alpha / n
            else:
                a, b, r, part_alpha = down, rows[j], total_rank, alpha
            if torch.count_nonzero(a) == 0 and torch.count_nonzero(b) == 0:
                continue
            modules[f"{prefix}.{index}.{part}"] = {
                "A": a.contiguous(),
                "B": b.contiguous(),
                "alpha": torch.tensor(part_alpha),
            }
    return modules


def delta_weight(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight change a module's LoRA applies at strength 1: (alpha / rank) * B @ A."""
    rank = parts["A"].shape[0]
    return (float(parts["alpha"]) / rank) * (parts["B"].float() @ parts["A"].float())
