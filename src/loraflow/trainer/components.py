"""Loading a Flux pipeline's parts from a local diffusers folder: tiny test model and FLUX.1 alike.

Real FLUX.1 on a 16-24 GB card needs a quantized base: nf4 through bitsandbytes or fp8 weight-only
through torchao, each used only when installed (the `train` extra does not pull them in on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class FluxParts:
    transformer: Any
    vae: Any
    clip: Any
    t5: Any
    clip_tokenizer: Any
    t5_tokenizer: Any
    scheduler: Any
    path: Path

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _quantization_config(quantize: str, dtype: torch.dtype) -> Any:
    if quantize == "nf4":
        try:
            from diffusers import BitsAndBytesConfig
        except ImportError as exc:  # pragma: no cover - GPU-only path
            raise RuntimeError("quantize: nf4 needs bitsandbytes; pip install bitsandbytes") from exc
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    if quantize in ("fp8", "qfloat8"):
        try:
            from diffusers import TorchAoConfig
        except ImportError as exc:  # pragma: no cover - GPU-only path
            raise RuntimeError("quantize: fp8 needs torchao; pip install torchao") from exc
        return TorchAoConfig("float8wo_e4m3")
    return None


def load_flux(path: str | Path, device: torch.device, precision: str, quantize: str = "none") -> FluxParts:
    """Load every part from `path` (a diffusers-format FLUX folder) without touching the network."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    path = Path(path)
    dtype = DTYPES[precision]
    kw: dict[str, Any] = {"local_files_only": True}
    qconfig = _quantization_config(quantize, dtype) if device.type == "cuda" else None
    transformer = FluxTransformer2DModel.from_pretrained(
        path, subfolder="transformer", torch_dtype=dtype, quantization_config=qconfig, **kw
    )
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **kw)
    clip = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype, **kw)
    t5 = T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", torch_dtype=dtype, **kw)
    tok1 = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
    tok2 = AutoTokenizer.from_pretrained(path, subfolder="tokenizer_2", **kw)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler", **kw)
    for module in (transformer, vae, clip, t5):
        module.requires_grad_(False)
        module.eval()
    for module in (transformer, vae, clip):
        # bitsandbytes places its base on the GPU while loading (and refuses .to); torchao leaves it on the CPU
        if next(module.parameters()).device.type != device.type:
            module.to(device)
    if fits_beside(t5, device):
        t5.to(device)
    # else T5-XXL (~9.5 GB in bf16) stays on the CPU next to a quantized base on a 12-24 GB card: it only
    # encodes each caption once, before training
    return FluxParts(transformer, vae, clip, t5, tok1, tok2, scheduler, path)


def fits_beside(module: torch.nn.Module, device: torch.device, spare: float = 1.25) -> bool:
    """Whether `module` fits in what is free on `device` now, with room for running it."""
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    need = sum(p.numel() * p.element_size() for p in module.parameters())
    return need * spare < free
