"""Turning the live LoRA into a file: the chosen key layout, dtype and header metadata."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from loraflow.trainer.config import TrainerConfig
from loraflow.trainer.lora_format import FluxDims, diffusers_modules, to_diffusers_layout, to_kohya_layout

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def adapter_state(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable LoRA tensors by parameter name (what checkpoints store, in fp32)."""
    return {n: p.detach().float().cpu().clone() for n, p in transformer.named_parameters() if p.requires_grad}


def lora_tensors(transformer: torch.nn.Module, cfg: TrainerConfig) -> dict[str, torch.Tensor]:
    """Export in cfg.lora_format with alpha kept as per-module keys, so every loader applies alpha/rank."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in adapter_state(transformer).items():
        # peft names: <module>.lora_A.default.weight
        state[name.replace(".default.weight", ".weight")] = tensor
    modules = diffusers_modules(state, cfg.alpha)
    dtype = SAVE_DTYPES[cfg.save_dtype]
    if cfg.lora_format == "kohya":
        out = to_kohya_layout(modules, FluxDims.from_config(dict(transformer.config)))
    else:
        out = to_diffusers_layout(modules)
    return {k: (v if k.endswith(".alpha") else v.to(dtype)).contiguous() for k, v in out.items()}


def lora_metadata(cfg: TrainerConfig, step: int) -> dict[str, str]:
    res = max(cfg.resolutions)
    meta = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.implementation": "https://github.com/black-forest-labs/flux",
        "modelspec.title": cfg.name,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        "modelspec.resolution": f"{res}x{res}",
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": str(cfg.alpha),
        "ss_output_name": cfg.name,
        "ss_steps": str(step),
        "ss_seed": str(cfg.seed),
        "loraflow.steps": str(step),
        "loraflow.rank": str(cfg.rank),
        "loraflow.alpha": str(cfg.alpha),
        "loraflow.format": cfg.lora_format,
        "loraflow.resolution": ",".join(map(str, cfg.resolutions)),
        "format": "pt",
    }
    if cfg.trigger_word:
        meta["modelspec.trigger_phrase"] = cfg.trigger_word
        meta["loraflow.trigger_word"] = cfg.trigger_word
    meta.update(cfg.metadata)
    return meta


def write_lora(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, tmp, metadata=metadata)
    tmp.replace(path)
