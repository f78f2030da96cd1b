"""What differs between musubi-tuner's script families (30c658c4) for its stand-in: the architecture short name
each family's caches carry (dataset/architectures.py: `<item>_<W>x<H>_<arch>.safetensors`,
`<item>_<arch>_te.safetensors`), what each caching and training script logs about its own models, and the
LoRA layout of each family's network module (networks/lora_wan, lora_qwen_image, lora_flux, lora_flux_2:
`lora_unet_<module path, dots as underscores>` over the blocks the model has, the modulation layers left out
as their default exclude patterns do). The family is the script's own name: `qwen_image_train_network.py`
trains Qwen-Image, as in musubi.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

WAN = [f"self_attn_{x}" for x in "qkvo"] + [f"cross_attn_{x}" for x in "qkvo"] + ["ffn_0", "ffn_2"]
QWEN = ["attn_to_q", "attn_to_k", "attn_to_v", "attn_to_out_0", "attn_add_q_proj", "attn_add_k_proj",
        "attn_add_v_proj", "attn_to_add_out", "img_mlp_net_0_proj", "img_mlp_net_2", "txt_mlp_net_0_proj",
        "txt_mlp_net_2"]
FLUX_DOUBLE = [f"{s}_{m}" for s in ("img", "txt") for m in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2")]
FLUX_SINGLE = ["linear1", "linear2"]
FLUX_2_DEPTHS = {"dev": (8, 48), "klein-base-9b": (8, 24), "klein-9b": (8, 24), "klein-base-4b": (5, 20),
                 "klein-4b": (5, 20)}  # flux2_models.py Flux2Params / Klein9BParams / Klein4BParams
FLUX_2_ARCH = {"dev": "f2d", "klein-base-9b": "f2k9b", "klein-9b": "f2k9b", "klein-base-4b": "f2k4b",
               "klein-4b": "f2k4b"}


@dataclass(frozen=True)
class Family:
    prefix: str
    text_lines: tuple[str, ...]  # what its text-encoder caching script logs before encoding
    model_line: str  # what its training script logs while loading the VAE / AE

    def architecture(self, args: argparse.Namespace) -> str:
        version = str(getattr(args, "model_version", None) or "")
        if self.prefix == "qwen_image":
            return "qie" if version.startswith("edit") else "qi"
        if self.prefix == "flux_kontext":
            return "fk"
        if self.prefix == "flux_2":
            return FLUX_2_ARCH.get(version or "dev", "f2d")
        return "wan"

    def blocks(self, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
        """(stream, modules) per block, in the order lora_<family> creates them."""
        if self.prefix == "qwen_image":
            return [(f"transformer_blocks_{i}", QWEN) for i in range(60)]
        if self.prefix in ("flux_kontext", "flux_2"):
            version = str(getattr(args, "model_version", None) or "dev")
            double, single = (19, 38) if self.prefix == "flux_kontext" else FLUX_2_DEPTHS.get(version, (8, 48))
            return [(f"double_blocks_{i}", FLUX_DOUBLE) for i in range(double)] + [
                (f"single_blocks_{i}", FLUX_SINGLE) for i in range(single)]
        count = 30 if (getattr(args, "task", None) or "").endswith("1.3B") else 40
        return [(f"blocks_{i}", WAN) for i in range(count)]


FAMILIES = {
    "wan": Family("wan", ("Loading T5: {t5}", "Encoding with T5"), "Loading VAE model from {vae}"),
    "qwen_image": Family("qwen_image", ("Loading Qwen2.5-VL: {text_encoder}", "Encoding with Qwen2.5-VL"),
                         "Loading VAE model from {vae}"),
    "flux_kontext": Family("flux_kontext", ("Encoding with T5 and CLIP text encoders",), "Loading AE model from {vae}"),
    "flux_2": Family("flux_2", ("Encoding with text encoder",), "Loading AE model from {vae}"),
}


def family_of(script: str) -> Family:
    """The family a script belongs to by its name (`flux_2_cache_latents.py` -> flux_2)."""
    name = Path(script).name
    for prefix in sorted(FAMILIES, key=len, reverse=True):
        if name.startswith(prefix + "_"):
            return FAMILIES[prefix]
    return FAMILIES["wan"]


def widths(module: str) -> tuple[int, int]:
    """(in, out) of a stand-in module: 16 wide, the MLPs' 64, so every file costs nothing."""
    if module in ("ffn_0", "img_mlp_net_0_proj", "txt_mlp_net_0_proj", "img_mlp_0", "txt_mlp_0", "linear1"):
        return 16, 64
    if module in ("ffn_2", "img_mlp_net_2", "txt_mlp_net_2", "img_mlp_2", "txt_mlp_2", "linear2"):
        return 64, 16
    return 16, 16
