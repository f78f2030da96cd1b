"""The model card (README.md) that goes in every bundle and on Hugging Face.

The front matter is huggingface_hub's own `ModelCardData` and the card a `ModelCard`, so the metadata the
Hub reads (license, base_model, tags, instance_prompt, widget) is written the way the Hub parses it.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from loraflow.spec import TrainSpec

_LICENSE_LINKS = {
    "flux-1-dev-non-commercial-license": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"
}
_OPEN_LICENSES = ("apache-2.0", "mit", "openrail++")


def front_matter(spec: TrainSpec, samples: list[dict[str, Any]]) -> ModelCardData:
    """The Hub's metadata: a licence the Hub knows by id, or "other" with its name and link."""
    entry = spec.catalog_entry
    licence: dict[str, Any] = {"license": entry.license}
    if entry.license not in _OPEN_LICENSES:
        link = entry.license_url or _LICENSE_LINKS.get(entry.license, "")
        licence = {"license": "other", "license_name": entry.license, "license_link": link}
    tags = ["lora", "text-to-image", "diffusers", "loraflow", entry.arch]
    if entry.arch == "flux":
        tags.append("template:sd-lora")
    if spec.dataset.nsfw:
        tags.append("not-for-all-audiences")
    return ModelCardData(
        base_model=entry.hub_id or None,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=tags,
        instance_prompt=spec.dataset.trigger_word or None,
        widget=[{"text": s["prompt"], "output": {"url": f"samples/{s['file']}"}} for s in samples],
        **licence,
    )


def scorecard_section(card: dict[str, Any], plot: str | None) -> list[str]:
    """The result check in the card: the verdict, the table per checkpoint and the chosen one, with why."""
    from loraflow.evaluation.scorecard import markdown_table

    verdict = card.get("effect_check") or {}
    best = card.get("best") or {}
    lines = ["", "## Result check", "", f"Effect check: {'passed' if verdict.get('passed') else 'failed'} — "
             f"{verdict.get('message', '')}", ""]
    if best.get("step") is not None:
        lines += [f"Best checkpoint: **step {best['step']}** — {best.get('why', '')}", ""]
    else:
        lines += [f"No best checkpoint: {best.get('why', '')}", ""]
    lines.append(markdown_table(card))
    if plot:
        lines += ["", f"![scorecard]({plot})"]
    lines += ["", "How each number is measured and how the best checkpoint is chosen: loraflow's "
              "docs/scorecard.md (`scorecard.json` in this bundle has every value)."]
    return lines


def pair_usage(experts: dict[str, Any], low: str, high: str) -> list[str]:
    """Wan 2.2 A14B: two files, one per expert; each loads on its own model, the way the base switches them."""
    boundary = experts.get("boundary", 875)
    return [
        "",
        "## Use it",
        "",
        f"Two files, one per Wan 2.2 expert, trained as one job: `{high}` for the high-noise model (timesteps "
        f"{boundary}-1000, the first steps of sampling) and `{low}` for the low-noise model (timesteps 0-{boundary}). "
        "Use both: each alone changes only its half of the sampling.",
        "",
        "### ComfyUI",
        "",
        f"Copy both into `ComfyUI/models/loras/`; put a *LoraLoaderModelOnly* node with `{high}` after the "
        f"high-noise diffusion model and one with `{low}` after the low-noise one (strength 1.0 each).",
        "",
        "### diffusers",
        "",
        "```python",
        "import torch",
        "from diffusers import WanPipeline",
        "",
        'pipe = WanPipeline.from_pretrained("<Wan 2.2 A14B diffusers folder>", torch_dtype=torch.bfloat16)',
        f'pipe.load_lora_weights(".", weight_name="{high}")  # transformer: the high-noise expert',
        f'pipe.load_lora_weights(".", weight_name="{low}", load_into_transformer_2=True)  # the low-noise one',
        "```",
    ]


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
    scorecard: dict[str, Any] | None = None,
    scorecard_plot: str | None = None,
    pair_file: str | None = None,
) -> str:
    """`pair_file`: Wan 2.2 A14B's high-noise expert's file; `lora_file` is then the low-noise expert's."""
    entry = spec.catalog_entry
    trigger = spec.dataset.trigger_word
    first_prompt = spec.substitute_trigger((spec.sampling.prompts or ["a photo of [trigger]"])[0])
    lines = [f"# {spec.name}", ""]
    lines.append(f"A LoRA for **{entry.name}** trained with loraflow ({spec.engine.name} engine, {steps} steps).")
    if trigger:
        lines += ["", f"Trigger word: `{trigger}` — put it in your prompt to call up what was trained."]
    if spec.dataset.nsfw:
        lines += ["", "This model is labelled NSFW by its creator."]
    if grid:
        lines += ["", "## Samples", "", f"![samples]({grid})"]
    if scorecard:
        lines += scorecard_section(scorecard, scorecard_plot)
    if pair_file:
        lines += pair_usage(entry.experts, lora_file, pair_file)
    lines += [] if pair_file else [
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
    ]
    lines += [
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
    body = "\n".join(lines) + "\n"
    return str(ModelCard(f"---\n{front_matter(spec, samples).to_yaml()}\n---\n\n{body}"))
