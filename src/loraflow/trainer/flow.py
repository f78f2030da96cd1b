"""Flux flow-matching math: text and image encoding, timestep sampling, packing, the loss.

Kept apart from the loop so each formula can be read (and tested) on its own.
"""

from __future__ import annotations

import math

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling

from loraflow.trainer.components import FluxParts


@torch.no_grad()
def encode_prompts(parts: FluxParts, prompts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 sequence embeddings [B, L, D], pooled CLIP [B, D]) as the pipeline computes them."""
    device = parts.clip.device
    clip_ids = parts.clip_tokenizer(
        prompts,
        padding="max_length",
        max_length=parts.clip_tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    pooled = parts.clip(clip_ids, output_hidden_states=False).pooler_output
    max_len = min(max_len, parts.t5_tokenizer.model_max_length)
    t5_ids = parts.t5_tokenizer(
        prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
    ).input_ids.to(parts.t5.device)
    embeds = parts.t5(t5_ids, output_hidden_states=False)[0]
    return embeds.float().cpu(), pooled.float().cpu()


@torch.no_grad()
def encode_images(parts: FluxParts, pixels: torch.Tensor) -> torch.Tensor:
    """VAE latent distribution parameters (mean and logvar, stacked on dim 1) for [-1, 1] pixels."""
    dist = parts.vae.encode(pixels.to(parts.vae.device, parts.vae.dtype)).latent_dist
    return torch.cat([dist.mean, dist.logvar], dim=1).float().cpu()


def sample_latents(params: torch.Tensor, generator: torch.Generator, shift: float, scale: float) -> torch.Tensor:
    """Draw a latent from cached (mean, logvar) and apply the VAE's shift and scale.

    The noise is drawn where `params` lives (the generator must live there too): no host round trip."""
    mean, logvar = params.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return ((mean + std * noise) - shift) * scale


def sample_sigmas(batch: int, mode: str, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Noise levels in (0, 1): uniform, sigmoid of a normal (logit-normal), or logit-normal shifted by `shift`
    (kohya's `shift`, FluxGym's recipe: the same meaning on every engine, docs/engines.md).

    The density is diffusers' own (`compute_density_for_timestep_sampling`, SD3's logit-normal with mean 0,
    std 1): it draws the same numbers from the generator as `sigmoid(randn)` / `rand` did, so the pinned
    tiny loss curve holds. The shift is the static shift of diffusers' flow-matching scheduler, which has
    no function of its own to call. Drawn on the generator's device."""
    scheme = "logit_normal" if mode in ("sigmoid", "logit_normal", "shift") else "uniform"
    u = compute_density_for_timestep_sampling(
        scheme, batch, logit_mean=0.0, logit_std=1.0, device=generator.device, generator=generator
    )
    if mode == "shift":
        u = shift * u / (1 + (shift - 1) * u)
    return u.clamp(1e-4, 1.0)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C]: Flux's 2x2 patches."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c4 = packed.shape
    x = packed.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Position ids of the packed latent grid: (0, row, column) per patch, built on `device`."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device)
    ids[..., 1] = torch.arange(h // 2, device=device)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=device)[None, :]
    return ids.reshape(-1, 3)


def draw_noise(
    latents: torch.Tensor, generator: torch.Generator, sampling: str, shift: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A loss's random part, drawn in the loss's order: the noise, then the noise levels (one per latent)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    sigmas = sample_sigmas(latents.shape[0], sampling, shift, generator).to(latents.device)
    return noise, sigmas


def flow_loss(
    parts: FluxParts,
    latents: torch.Tensor,
    embeds: torch.Tensor,
    pooled: torch.Tensor,
    generator: torch.Generator,
    *,
    sampling: str,
    shift: float,
    guidance: float,
    dtype: torch.dtype,
    model: torch.nn.Module | None = None,
    drawn: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One flow-matching loss: predict (noise - x0) at a random noise level, unweighted (diffusers'
    `compute_loss_weighting_for_sd3` with no scheme is all ones: nothing to call until a weighting is offered).

    With `latents` and `generator` on the training device nothing here waits for the host: every
    tensor is made where it is used (a host-to-GPU copy of pageable memory synchronizes). `model` is the
    transformer as called (under DDP with several processes), `parts.transformer` by default; `drawn` the
    noise and noise levels `draw_noise` drew for it (the loop draws them for every process's micro-batch)."""
    device = next(parts.transformer.parameters()).device
    b, _, h, w = latents.shape
    noise, sigmas = drawn if drawn is not None else draw_noise(latents, generator, sampling, shift)
    s = sigmas.view(b, 1, 1, 1)
    noisy = (1.0 - s) * latents + s * noise
    guidance_t = torch.full((b,), guidance, device=device, dtype=dtype) if parts.guidance_embeds else None
    pred = (model or parts.transformer)(
        hidden_states=pack(noisy).to(device, dtype),
        timestep=sigmas.to(device, dtype),
        guidance=guidance_t,
        pooled_projections=pooled.to(device, dtype),
        encoder_hidden_states=embeds.to(device, dtype),
        txt_ids=torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype),
        img_ids=image_ids(h, w, device).to(dtype),
        return_dict=False,
    )[0]
    target = (noise - latents).to(device)
    return torch.mean((unpack(pred.float(), h, w) - target.float()) ** 2)


def bucket_size(width: int, height: int, base: int, multiple: int = 16) -> tuple[int, int]:
    """The training size for an image: about base x base pixels, the image's aspect, multiples of 16."""
    aspect = width / height
    bw = max(multiple, round(base * math.sqrt(aspect) / multiple) * multiple)
    bh = max(multiple, round(base / math.sqrt(aspect) / multiple) * multiple)
    return bw, bh
