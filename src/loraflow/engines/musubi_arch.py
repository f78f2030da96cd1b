"""musubi-tuner's script families, one per architecture, read from musubi-tuner at 30c658c4 (docs/wan.md,
flux_kontext.md, flux_2.md, qwen_image.md and each script's argparse): which caching and training scripts,
which file each takes by which flag, the LoRA module, the fp8 flag of its text encoder, and what an
image-to-video or edit model adds."""

from __future__ import annotations

from dataclasses import dataclass

from loraflow.spec import TrainSpec


@dataclass(frozen=True)
class Family:
    prefix: str  # <prefix>_cache_latents.py, <prefix>_cache_text_encoder_outputs.py, <prefix>_train_network.py
    network: str
    train_files: tuple[str, ...]  # catalog musubi_files roles = musubi flags, in the docs' order
    latent_files: tuple[str, ...]
    text_files: tuple[str, ...]
    fp8_text: str | None  # the text encoder's fp8 flag while caching (None: the family has none)
    text_batch: int = 16
    guidance: bool = False  # trains with a guidance value (`--guidance_scale`)

    @property
    def train_script(self) -> str:
        return f"{self.prefix}_train_network.py"


FAMILIES = {
    "wan": Family("wan", "networks.lora_wan", ("dit", "dit_high_noise", "vae", "t5", "clip"), ("vae", "clip"),
                  ("t5",), "--fp8_t5"),
    "qwen_image": Family("qwen_image", "networks.lora_qwen_image", ("dit", "vae", "text_encoder"), ("vae",),
                         ("text_encoder",), "--fp8_vl", text_batch=1),
    "flux_kontext": Family("flux_kontext", "networks.lora_flux", ("dit", "vae", "text_encoder1", "text_encoder2"),
                           ("vae",), ("text_encoder1", "text_encoder2"), "--fp8_t5", guidance=True),
    "flux_2": Family("flux_2", "networks.lora_flux_2", ("dit", "vae", "text_encoder"), ("vae",), ("text_encoder",),
                     "--fp8_text_encoder", guidance=True),
}


def family(spec: TrainSpec) -> Family:
    return FAMILIES[spec.catalog_entry.musubi_arch]


def fp8_text_flag(spec: TrainSpec) -> str | None:
    """FLUX.2 [dev]'s Mistral text encoder has no fp8 mode in musubi (docs/flux_2.md)."""
    fam = family(spec)
    if fam.prefix == "flux_2" and spec.catalog_entry.variant == "dev":
        return None
    return fam.fp8_text


def latent_extra(spec: TrainSpec) -> list[str]:
    """Wan image-to-video caches each clip's first frame too (`--i2v`)."""
    task = str(spec.catalog_entry.musubi_task or "")
    return ["--i2v"] if task.startswith("i2v") else []
