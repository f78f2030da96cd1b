"""Sample images during and after training: fixed seeds, prompts embedded once, a JSON per round."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from loraflow.trainer.attention import configure_for_model
from loraflow.trainer.components import FluxParts


@torch.no_grad()
def render_samples(
    parts: FluxParts,
    prompts: list[str],
    embeds: list[tuple[torch.Tensor, torch.Tensor]],
    out_dir: Path,
    step: int,
    *,
    width: int,
    height: int,
    seed: int,
    guidance: float,
    steps: int,
) -> list[dict]:
    """Write one PNG per prompt under out_dir/step-NNNNNN/ plus index.json; returns the index."""
    from diffusers import FluxPipeline

    device = next(parts.transformer.parameters()).device
    dtype = parts.vae.dtype
    if embeds:  # the kernel training chose (sampling on its own chooses here, at its own token count)
        configure_for_model(parts.transformer, device, (width // 16) * (height // 16) + embeds[0][0].shape[1], dtype)
    pipe = FluxPipeline(
        scheduler=parts.scheduler,
        vae=parts.vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=parts.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    folder = out_dir / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for i, (prompt, (t5, pooled)) in enumerate(zip(prompts, embeds, strict=True)):
        generator = torch.Generator("cpu").manual_seed(seed + i)
        image = pipe(
            prompt_embeds=t5.to(device, dtype),
            pooled_prompt_embeds=pooled.to(device, dtype),
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
        ).images[0]
        name = f"{i:02d}.png"
        tmp = folder / (name + ".partial")
        image.save(tmp, format="PNG")
        tmp.replace(folder / name)
        index.append(
            {
                "file": f"step-{step:06d}/{name}",
                "prompt": prompt,
                "seed": seed + i,
                "step": step,
                "width": width,
                "height": height,
                "guidance": guidance,
                "steps": steps,
            }
        )
    (folder / "index.json").write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    return index
