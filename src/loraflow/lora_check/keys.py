"""Which LoRA keys each architecture's loaders understand, and which modules a target preset must cover.

Written from how ComfyUI maps LoRA keys onto a model (comfy/lora.py `model_lora_keys_unet`): for every
model, `lora_unet_<the model's own weight path, dots as underscores>`; for Flux also `transformer.<the
diffusers module path>` (comfy.utils.flux_to_diffusers); for Qwen-Image `transformer.<module path>` (its
ComfyUI paths are diffusers'); for SDXL `lora_unet_<diffusers UNet path, flattened>` and the text
encoders' `lora_te1_/lora_te2_text_model_encoder_layers_N_<module>`. diffusers reads the same families
(`transformer.` peft keys, and kohya files through its kohya converters), so a key outside them is one no
loader applies: the file is refused rather than delivered with silently ignored weights.

A parsed key names its stream of blocks (Flux's double and single blocks, a DiT's blocks, SDXL's UNet
transformer blocks), the block, the module as the file names it, the unfused modules it covers (a kohya
Flux `img_attn_qkv` covers q, k and v) and the base weights it adapts, in both base layouts it may meet
(diffusers folders, and the original single files ComfyUI and sd-scripts load).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from loraflow.trainer.flux_modules import ATTENTION, MLP, MODULATION, SINGLE_ATTENTION, SINGLE_MAP, SINGLE_MLP
from loraflow.trainer.flux_modules import DOUBLE_MAP as FLUX_DOUBLE_MAP

SUFFIXES = {
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".alpha": "alpha",
}


@dataclass(frozen=True)
class ModuleKey:
    stem: str  # the key before its `.lora_down.weight` / `.lora_A.weight` / `.alpha` suffix
    stream: str  # "double", "single", "blocks", "unet", "unet_proj", "te1", "te2"
    block: str  # the block within its stream: "3", or SDXL's "down_blocks.1.attentions.0.transformer_blocks.1"
    covers: tuple[str, ...]  # the unfused modules it adapts, by the architecture's canonical (diffusers) names
    base_keys: tuple[tuple[str, ...], ...]  # per base layout: the weights whose norms make up the adapted layer


def split_key(key: str) -> tuple[str, str] | None:
    """'x.lora_up.weight' -> ('x', 'up'); None for a key of no LoRA family."""
    for suffix, part in SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


# --- Flux ---------------------------------------------------------------------------------------------

FLUX_DOUBLE = ATTENTION + MLP + MODULATION
FLUX_SINGLE = SINGLE_ATTENTION + SINGLE_MLP + ["norm.linear"]
# kohya's fused names -> the original (BFL) weight paths ComfyUI and sd-scripts load
BFL = {
    "img_attn_qkv": "img_attn.qkv", "img_attn_proj": "img_attn.proj", "img_mlp_0": "img_mlp.0",
    "img_mlp_2": "img_mlp.2", "img_mod_lin": "img_mod.lin", "txt_attn_qkv": "txt_attn.qkv",
    "txt_attn_proj": "txt_attn.proj", "txt_mlp_0": "txt_mlp.0", "txt_mlp_2": "txt_mlp.2",
    "txt_mod_lin": "txt_mod.lin", "linear1": "linear1", "linear2": "linear2", "modulation_lin": "modulation.lin",
}
_FLUX_KOHYA = re.compile(r"^lora_unet_(double|single)_blocks_(\d+)_(\w+)$")
_FLUX_DIFFUSERS = re.compile(r"^transformer\.(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


def _flux(stem: str) -> ModuleKey | None:
    m = _FLUX_KOHYA.match(stem)
    if m:
        stream, i, name = m.group(1), m.group(2), m.group(3)
        mapping = FLUX_DOUBLE_MAP if stream == "double" else SINGLE_MAP
        if name not in mapping:
            return None
        prefix = "transformer_blocks" if stream == "double" else "single_transformer_blocks"
        parts = tuple(mapping[name])
        diffusers = tuple(f"{prefix}.{i}.{p}.weight" for p in parts)
        return ModuleKey(stem, stream, i, parts, (diffusers, (f"{stream}_blocks.{i}.{BFL[name]}.weight",)))
    m = _FLUX_DIFFUSERS.match(stem)
    if m:
        prefix, i, name = m.group(1), m.group(2), m.group(3)
        stream = "double" if prefix == "transformer_blocks" else "single"
        if name not in (FLUX_DOUBLE if stream == "double" else FLUX_SINGLE):
            return None
        return ModuleKey(stem, stream, i, (name,), ((f"{prefix}.{i}.{name}.weight",),))
    return None


# --- single-stream DiTs: Qwen-Image, Wan ----------------------------------------------------------------

QWEN_ATTENTION = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                  "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]
QWEN_MLP = ["img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2"]
QWEN_MOD = ["img_mod.1", "txt_mod.1"]
WAN_ATTENTION = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o"]
WAN_MLP = ["ffn.0", "ffn.2"]
WAN_I2V = ["cross_attn.k_img", "cross_attn.v_img"]


class _BlockKeys:
    """A DiT whose blocks are one stream `<blocks>.N.<module>`: keyed by path (`transformer.` or
    `diffusion_model.` prefixed, or bare) or flattened (`lora_unet_<blocks>_N_<module with underscores>`)."""

    def __init__(self, blocks: str, modules: list[str]) -> None:
        self.blocks, self.modules = blocks, set(modules)
        self.path = re.compile(rf"^(?:transformer\.|diffusion_model\.)?{re.escape(blocks)}\.(\d+)\.(.+)$")
        self.flat = re.compile(rf"^lora_unet_{blocks}_(\d+)_(\w+)$")
        self.flat_names = {n.replace(".", "_"): n for n in modules}

    def __call__(self, stem: str) -> ModuleKey | None:
        m = self.path.match(stem)
        name = m.group(2) if m else None
        if m is None:
            m = self.flat.match(stem)
            name = self.flat_names.get(m.group(2)) if m else None
        if m is None or name not in self.modules:
            return None
        i = m.group(1)
        return ModuleKey(stem, "blocks", i, (name,), ((f"{self.blocks}.{i}.{name}.weight",),))


_qwen = _BlockKeys("transformer_blocks", QWEN_ATTENTION + QWEN_MLP + QWEN_MOD)
_wan = _BlockKeys("blocks", WAN_ATTENTION + WAN_MLP + WAN_I2V)


# --- SDXL ---------------------------------------------------------------------------------------------

SDXL_ATTENTION = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                  "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
SDXL_MLP = ["ff.net.0.proj", "ff.net.2"]
# (attention, transformer blocks in it) for each of SDXL's attention groups
SDXL_GROUPS = [(f"down_blocks.{d}.attentions.{a}", n) for d, n in ((1, 2), (2, 10)) for a in range(2)]
SDXL_GROUPS += [("mid_block.attentions.0", 10)]
SDXL_GROUPS += [(f"up_blocks.{u}.attentions.{a}", n) for u, n in ((0, 10), (1, 2)) for a in range(3)]
SDXL_BLOCKS = [f"{g}.transformer_blocks.{j}" for g, n in SDXL_GROUPS for j in range(n)]
TE_MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]
_SDXL_FLAT = {
    **{f"{b}.{k}".replace(".", "_"): (b, k) for b in SDXL_BLOCKS for k in SDXL_ATTENTION + SDXL_MLP},
    **{f"{g}.{k}".replace(".", "_"): (g, k) for g, _ in SDXL_GROUPS for k in ("proj_in", "proj_out")},
}
_SDXL_TE = re.compile(r"^lora_te([12])_text_model_encoder_layers_(\d+)_(\w+)$")
_TE_FLAT = {n.replace(".", "_"): n for n in TE_MODULES}


def _sdxl(stem: str) -> ModuleKey | None:
    if stem.startswith("lora_unet_"):
        found = _SDXL_FLAT.get(stem.removeprefix("lora_unet_"))
        if found is None:
            return None
        block, name = found
        stream = "unet_proj" if name in ("proj_in", "proj_out") else "unet"
        return ModuleKey(stem, stream, block, (name,), ((f"{block}.{name}.weight",),))
    m = _SDXL_TE.match(stem)
    if m and m.group(3) in _TE_FLAT:
        name = _TE_FLAT[m.group(3)]
        return ModuleKey(stem, f"te{m.group(1)}", m.group(2), (name,), ())
    return None


PARSERS: dict[str, Callable[[str], ModuleKey | None]] = {"flux": _flux, "qwen_image": _qwen, "wan": _wan, "sdxl": _sdxl}
# Same denoiser, same LoRA keys: FLUX.1 Kontext is FLUX.1 [dev]'s transformer, Qwen-Image-Edit Qwen-Image's.
SAME_KEYS = {"flux_kontext": "flux", "qwen_image_edit": "qwen_image"}


def rules_for(arch: str) -> str | None:
    """The architecture whose key rules apply, or None where loraflow has none (then every module is checked
    for its shapes, values and update, but not its name)."""
    arch = SAME_KEYS.get(arch, arch)
    return arch if arch in PARSERS else None


def parse(arch: str, stem: str) -> ModuleKey | None:
    """The module a key stem names in this architecture, or None when no loader of it knows the key; for an
    architecture without rules, every stem is its own module."""
    rules = rules_for(arch)
    if rules is None:
        return ModuleKey(stem, "any", stem, (stem,), ())
    return PARSERS[rules](stem)


def required(arch: str, targets: str | list[str]) -> dict[str, list[str]]:
    """Modules every block of a stream must adapt for a target preset (the set every engine's translation of
    the preset includes); a module list names its own modules, so only the architecture's keys are checked."""
    arch = rules_for(arch) or ""
    if isinstance(targets, list):
        return {}
    wide, every = targets in ("default", "all"), targets == "all"
    if arch == "flux":
        return {
            "double": ATTENTION + (MLP if wide else []) + (MODULATION if every else []),
            "single": SINGLE_ATTENTION + (SINGLE_MLP if wide else []) + (["norm.linear"] if every else []),
        }
    if arch == "qwen_image":
        return {"blocks": QWEN_ATTENTION + (QWEN_MLP if wide else []) + (QWEN_MOD if every else [])}
    if arch == "wan":
        return {"blocks": WAN_ATTENTION + (WAN_MLP if wide else [])}
    if arch == "sdxl":
        return {"unet": list(SDXL_ATTENTION)}
    return {}


def expected_blocks(arch: str, geometry: dict[str, int] | None) -> dict[str, list[str]]:
    """Each stream's block names: SDXL's are fixed, the DiTs' come from the model's depth when known."""
    arch = rules_for(arch) or ""
    if arch == "sdxl":
        return {"unet": list(SDXL_BLOCKS)}
    return {stream: [str(i) for i in range(n)] for stream, n in (geometry or {}).items()}
