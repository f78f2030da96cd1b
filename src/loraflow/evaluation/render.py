"""Renders for the result check: the base model loaded once with diffusers, each LoRA file loaded onto it
in turn with `load_lora_weights` (so any engine's output diffusers reads is checked the same way), the same
prompts and seeds rendered with and without the LoRA and with and without the trigger word.

A render keeps its final latent (the effect check measures there: the VAE's space, no decoder noise in it)
and its decoded picture (the scorecard's encoders look at that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from loraflow.trainer.components import FluxParts
from loraflow.trainer.flow import draw_noise, encode_images, encode_prompts, flow_loss, sample_latents

BATCH = 4  # renders per pipeline call: the evaluation's default 2 seeds x (with, without trigger) in one
LOSS_BATCH = 8  # held-out loss forwards per call: 8 images x 4 draws in 4 calls


@dataclass
class Render:
    prompt: str
    seed: int
    latent: torch.Tensor  # packed, as the pipeline returns it
    image: Image.Image


class Renderer:
    """One pipeline over the loaded parts; LoRAs come and go as named adapters."""

    def __init__(self, parts: FluxParts, *, width: int, height: int, steps: int, guidance: float,
                 max_sequence_length: int) -> None:
        from diffusers import FluxPipeline

        self.parts = parts
        self.width, self.height, self.steps, self.guidance = width, height, steps, guidance
        self.max_len = max_sequence_length
        self.pipe = FluxPipeline(
            scheduler=parts.scheduler, vae=parts.vae, text_encoder=None, tokenizer=None,
            text_encoder_2=None, tokenizer_2=None, transformer=parts.transformer,
        )
        self.pipe.set_progress_bar_config(disable=True)
        self._embeds: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._draws: dict[tuple[object, ...], tuple[torch.Tensor, ...]] = {}
        self._trips: dict[Path, Image.Image] = {}
        self.device = next(parts.transformer.parameters()).device
        self.dtype = parts.vae.dtype

    def embed(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        if prompt not in self._embeds:
            self._embeds[prompt] = encode_prompts(self.parts, [prompt], self.max_len)
        return self._embeds[prompt]

    @torch.no_grad()
    def render(self, prompt: str, seed: int) -> Render:
        return self.render_all([prompt], [seed])[0]

    @torch.no_grad()
    def render_all(self, prompts: list[str], seeds: list[int]) -> list[Render]:
        """Every prompt with every seed (prompt-major), up to BATCH renders in one pipeline call: one
        generator per render, so each starts from exactly the noise it gets alone (diffusers draws a
        batch's noise sample by sample from its own generator), at a fraction of the calls."""
        wanted = [(p, s) for p in prompts for s in seeds]
        out: list[Render] = []
        for i in range(0, len(wanted), BATCH):
            chunk = wanted[i : i + BATCH]
            embeds = [self.embed(p) for p, _ in chunk]
            latents = self.pipe(
                prompt_embeds=torch.cat([t5 for t5, _ in embeds]).to(self.device, self.dtype),
                pooled_prompt_embeds=torch.cat([pooled for _, pooled in embeds]).to(self.device, self.dtype),
                width=self.width,
                height=self.height,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=[torch.Generator("cpu").manual_seed(seed) for _, seed in chunk],
                output_type="latent",
            ).images
            for (prompt, seed), latent in zip(chunk, latents.split(1), strict=True):
                out.append(Render(prompt, seed, latent.float().cpu(), self.decode(latent)))
        return out

    @torch.no_grad()
    def decode(self, packed: torch.Tensor) -> Image.Image:
        vae = self.parts.vae
        latents = self.pipe._unpack_latents(packed, self.height, self.width, self.pipe.vae_scale_factor)
        latents = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        pixels = vae.decode(latents, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(pixels, output_type="pil")[0]

    @torch.no_grad()
    def round_trip(self, path: Path) -> Image.Image:
        """A dataset image as the model can ever show it: resized to the render size and passed through the
        VAE (encode, decode). Samples are compared with this, so a score measures what the LoRA learned,
        not the VAE's fidelity (for FLUX.1's VAE the round trip is close to the original). Once per image:
        the reference images are the training images when none is held out."""
        if path not in self._trips:
            self._trips[path] = self._round_trip(path)
        return self._trips[path]

    def _round_trip(self, path: Path) -> Image.Image:
        from loraflow.trainer.data import load_pixels

        pixels = load_pixels(path, (self.width, self.height)).unsqueeze(0)
        mean = encode_images(self.parts, pixels).chunk(2, dim=1)[0]
        vae = self.parts.vae
        decoded = vae.decode(mean.to(vae.device, vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(decoded, output_type="pil")[0]

    @torch.no_grad()
    def held_out_loss(self, items: list[tuple[Path, str]], draws: int = 4, most: int = 8) -> float:
        """The training objective on images the LoRA never saw: the mean flow-matching loss over the same
        noise and noise levels (fixed seeds) for every LoRA, so checkpoints compare pair for pair. At most
        `most` images (the first by name), `draws` noise draws each: a few seconds on FLUX.1.

        The images are encoded and their noise drawn once per run (`held_out_draws`: every LoRA gets the
        very same tensors), and the forwards go LOSS_BATCH at a time: one call instead of many, with the
        loss the mean of the per-draw losses as before (every draw has the same shape)."""
        latents, t5, pooled, noise, sigmas = self.held_out_draws(items[:most], draws)
        n, total = latents.shape[0], 0.0
        for i in range(0, n, LOSS_BATCH):
            part = slice(i, i + LOSS_BATCH)
            loss = flow_loss(self.parts, latents[part], t5[part], pooled[part], torch.Generator(),
                             sampling="sigmoid", shift=3.0, guidance=1.0, dtype=self.dtype,
                             drawn=(noise[part], sigmas[part]))
            total += float(loss) * latents[part].shape[0]
        return total / n if n else 0.0

    def held_out_draws(self, items: list[tuple[Path, str]], draws: int) -> tuple[torch.Tensor, ...]:
        """(latents, T5, pooled, noise, noise levels) of every (image, draw), stacked: draw k of an image
        from a generator seeded k, in the order the loss always drew them (the latent, the noise, the level)."""
        key = (tuple(items), draws)
        if key not in self._draws:
            from loraflow.trainer.data import load_pixels

            vae = self.parts.vae.config
            rows: list[tuple[torch.Tensor, ...]] = []
            for path, caption in items:
                params = encode_images(self.parts, load_pixels(path, (self.width, self.height)).unsqueeze(0))
                t5, pooled = self.embed(caption)
                for k in range(draws):
                    gen = torch.Generator().manual_seed(k)
                    latent = sample_latents(params, gen, vae.shift_factor or 0.0, vae.scaling_factor)
                    noise, sigma = draw_noise(latent, gen, "sigmoid", 3.0)
                    rows.append((latent, t5, pooled, noise, sigma))
            self._draws[key] = tuple(torch.cat(col) for col in zip(*rows, strict=True)) if rows else \
                tuple(torch.zeros(0) for _ in range(5))
        return self._draws[key]

    # --- LoRA files ---------------------------------------------------------------------------------

    def load_lora(self, path: str, name: str) -> bool:
        """Put the LoRA file on the pipeline as the only active adapter; False when it holds no update at all
        (nothing loaded: the base model alone).

        A file shaped like the adapter already loaded under `name` (the next checkpoint of the same job) is
        swapped into it in place (diffusers' `hotswap`: the file's weights and scale, without building the
        adapter's layers again); one that is not (another rank, other modules) replaces it."""
        loaded: bool | None = None
        if name in self.pipe.get_list_adapters().get("transformer", []):
            try:
                loaded = self._put(path, name, hotswap=True)
            except (AssertionError, ValueError, KeyError, RuntimeError):
                loaded = None  # not the same shape: load it afresh
            if loaded is None:
                self.unload_lora(name)
        if loaded is None:
            loaded = self._put(path, name, hotswap=False)
        if not loaded:
            self.unload_lora(name)
            return False
        self.pipe.set_adapters([name])
        return True

    def _put(self, path: str, name: str, hotswap: bool) -> bool:
        """diffusers reads every engine's layout; its kohya-Flux conversion assumes FLUX.1's widths, so a
        kohya file it cannot split (a smaller Flux, such as the tiny model) is converted by loraflow's
        exact converter instead. False when every part of the file is zero."""
        from safetensors.torch import load_file

        try:
            self.pipe.load_lora_weights(path, adapter_name=name, hotswap=hotswap)
        except (AssertionError, ValueError, KeyError, RuntimeError):
            state = load_file(path)
            if not any(k.startswith("lora_unet_") for k in state):
                raise
            from loraflow.trainer.lora_format import FluxDims, from_kohya_layout, to_diffusers_layout

            modules = from_kohya_layout(state, FluxDims.from_config(dict(self.parts.transformer.config)))
            if not modules:
                return False  # every part is zero: the LoRA changes nothing
            self.pipe.load_lora_weights(to_diffusers_layout(modules), adapter_name=name, hotswap=hotswap)
        return True

    def unload_lora(self, name: str) -> None:
        if name in self.pipe.get_list_adapters().get("transformer", []):
            self.pipe.delete_adapters([name])
