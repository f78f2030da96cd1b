"""What the result check of a job checks: its config rendered from the spec, and which LoRA files it scores.

The runner writes the config into the job folder where the base model is (this machine, or the rented
host before it is released) and starts `python -m loraflow.evaluation <folder>/config.json` there, the
same way it starts the trainer (docs/scorecard.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from loraflow.evaluation.config import EvalConfig, LoraUnderTest, eval_prompts, eval_size
from loraflow.layout import JobLayout
from loraflow.spec import TrainSpec

CONFIG = "config.json"
ARCH_CHECKED = ("flux",)  # architectures the renders support today; others get the structural check only
STEP_DIR = re.compile(r"^step-(\d+)$")


def checks_effect(spec: TrainSpec) -> bool:
    """Whether this job gets the effect check and scorecard (enabled, and an architecture it renders)."""
    return spec.evaluation.enabled and spec.catalog_entry.arch in ARCH_CHECKED and spec.engine.name != "fal"


def max_sequence_length(spec: TrainSpec) -> int:
    entry = spec.catalog_entry
    return 64 if spec.base_model == "tiny-flux" else (256 if entry.variant == "schnell" else 512)


def loras_to_check(
    final: Path | None, checkpoints: list[tuple[int, Path]], total_steps: int | None
) -> list[LoraUnderTest]:
    """The final LoRA and every kept checkpoint; a checkpoint at the final step is the final file already."""
    out = [LoraUnderTest(name=f"step-{step:06d}", path=str(path), step=step)
           for step, path in sorted(checkpoints) if not (final is not None and step == total_steps)]
    if final is not None:
        out.append(LoraUnderTest(name="final", path=str(final), step=total_steps or 0))
    return out


def kept_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """(step, lora file) of every checkpoint folder holding a `lora.safetensors`, the standard layout."""
    found = []
    for folder in sorted(checkpoints_dir.glob("step-*")) if checkpoints_dir.is_dir() else []:
        m = STEP_DIR.match(folder.name)
        if m and (folder / "lora.safetensors").is_file():
            found.append((int(m.group(1)), folder / "lora.safetensors"))
    return found


def eval_config(
    spec: TrainSpec, job_id: str, layout: JobLayout, model_path: str, loras: list[LoraUnderTest],
    holdout_count: int, device: str = "auto",
) -> EvalConfig:
    """The evaluation process's config; `layout` and every path are as seen where it runs."""
    e = spec.evaluation
    width, height = eval_size(spec)
    reference = layout.holdout if holdout_count else layout.dataset
    return EvalConfig(
        job_id=job_id,
        model_path=model_path,
        loras=loras,
        prompts=eval_prompts(spec),
        trigger_word=spec.dataset.trigger_word,
        reference_dir=reference,
        reference_kind="holdout" if holdout_count else "training",
        training_dir=layout.dataset,
        out_dir=layout.evaluation,
        seeds=[spec.sampling.seed + i for i in range(e.seeds)],
        width=width,
        height=height,
        steps=e.steps,
        guidance=spec.sampling.guidance_scale,
        max_sequence_length=max_sequence_length(spec),
        precision=spec.training.precision,
        device=device,
        image_encoder=e.image_encoder,
        clip_model=e.clip_model,
        face_model=os.environ.get("LORAFLOW_ARCFACE_MODEL") or None,
        min_effect=e.min_effect,
        min_trigger=e.min_trigger,
        require_trigger=e.require_trigger,
        memorization=e.memorization,
    )


def command(layout: JobLayout, python: str) -> list[str]:
    """The argv that runs the check where the job folder `layout` is."""
    import sys

    exe = sys.executable if python == "auto" else python
    return [exe, "-m", "loraflow.evaluation", str(PurePosixPath(layout.evaluation, CONFIG))]
