"""The model card (README.md) that goes in every bundle and on Hugging Face."""

from __future__ import annotations

from typing import Any

import yaml

from loraflow.spec import TrainSpec

_LICENSE_LINKS = {
    "flux-1-dev-non-commercial-license": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"
}


def front_matter(spec: TrainSpec, samples: list[dict[str, Any]]) -> dict[str, Any]:
    entry = spec.catalog_entry
    meta: dict[str, Any] = {}
    if entry.hub_id:
        meta["base_model"] = entry.hub_id
    if entry.license in ("apache-2.0", "mit", "openrail++"):
        meta["license"] = entry.license
    else:
        meta.update(
            {
                "license": "other",
                "license_name": entry.license,
                "license_link": entry.license_url or _LICENSE_LINKS.get(entry.license, ""),
            }
        )
    tags = ["lora", "text-to-image", "diffusers", "loraflow", entry.arch]
    if entry.arch == "flux":
        tags.append("template:sd-lora")
    if spec.dataset.nsfw:
        tags.append("not-for-all-audiences")
    meta["tags"] = tags
    if spec.dataset.trigger_word:
        meta["instance_prompt"] = spec.dataset.trigger_word
    meta["widget"] = [{"text": s["prompt"], "output": {"url": f"samples/{s['file']}"}} for s in samples]
    return meta


def render_card(
    spec: TrainSpec,
    *,
    lora_file: str,
    steps: int,
    final_loss: float | None,
    samples: list[dict[str, Any]],
    grid: str | None,
    job_id: str,
    dataset_hash: str | None,
) -> str:
    entry = spec.catalog_entry
    trigger = spec.dataset.trigger_word
    first_prompt = spec.substitute_trigger((spec.sampling.prompts or ["a photo of [trigger]"])[0])
    head = yaml.safe_dump(front_matter(spec, samples), sort_keys=False, allow_unicode=True)
    lines = [f"---\n{head}---", "", f"# {spec.name}", ""]
    lines.append(f"A LoRA for **{entry.name}** trained with loraflow ({spec.engine.name} engine, {steps} steps).")
    if trigger:
        lines += ["", f"Trigger word: `{trigger}` — put it in your prompt to call up what was trained."]
    if spec.dataset.nsfw:
        lines += ["", "This model is labelled NSFW by its creator."]
    if grid:
        lines += ["", "## Samples", "", f"![samples]({grid})"]
    lines += [
        "",
        "## Use it",
        "",
        "### ComfyUI / Forge",
        "",
        f"Copy `{lora_file}` into `ComfyUI/models/loras/` (Forge: `models/Lora/`) and load it with a "
        "*LoraLoaderModelOnly* node (strength 1.0) after the base model.",
        "",
        "### diffusers",
        "",
        "```python",
        "import torch",
        "from diffusers import FluxPipeline",
        "",
        f'pipe = FluxPipeline.from_pretrained("{entry.hub_id or "<base model folder>"}", '
        'torch_dtype=torch.bfloat16).to("cuda")',
        f'pipe.load_lora_weights(".", weight_name="{lora_file}")',
        f'image = pipe("{first_prompt}", num_inference_steps=28, guidance_scale=3.5).images[0]',
        "```",
        "",
        "## Training settings",
        "",
        "| setting | value |",
        "| --- | --- |",
    ]
    t, n = spec.training, spec.network
    for key, value in [
        ("base model", spec.base_model),
        ("engine", spec.engine.name),
        ("steps", steps),
        ("rank / alpha", f"{n.rank} / {n.alpha}"),
        ("learning rate", t.learning_rate),
        ("optimizer", t.optimizer),
        ("resolution", ", ".join(map(str, t.resolution))),
        ("batch size", t.batch_size),
        ("precision", t.precision),
        ("final loss", f"{final_loss:.4f}" if final_loss is not None else "-"),
        ("dataset hash", (dataset_hash or "-")[:16]),
        ("job", job_id),
    ]:
        lines.append(f"| {key} | {value} |")
    return "\n".join(lines) + "\n"
