"""The evaluation section: how a finished job is checked and its kept checkpoints scored (docs/scorecard.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from loraflow.spec.strict import Strict

HOLDOUT_MIN_IMAGES = 12  # `holdout: auto` holds images out only from a dataset at least this large


class EvaluationSpec(Strict):
    """The effect check and the scorecard: rendered on the host where the base model is, after training."""

    enabled: bool = Field(True, description="Run the effect check and score every kept checkpoint after training.")
    holdout: int | Literal["auto"] = Field(
        "auto",
        description="Images kept out of training to score against: auto holds out one in ten (at most 4) from a "
        f"dataset of {HOLDOUT_MIN_IMAGES} or more images and none from a smaller one; 0 holds out none.",
    )
    prompts: list[str] = Field(
        default_factory=list,
        description="Prompts for the check and the scorecard ([trigger] becomes the trigger word); empty: the "
        "sampling prompts.",
    )
    seeds: int = Field(2, ge=1, le=16, description="Seeds rendered per prompt (the same seeds for every variant).")
    size: int = Field(512, ge=16, description="Longest side of the evaluation renders in pixels (at most the "
                      "sampling size).")
    steps: int = Field(12, ge=1, le=100, description="Inference steps of the evaluation renders.")
    image_encoder: str = Field(
        "facebook/dinov2-small",
        description="Vision encoder for sample-to-dataset similarity and memorization (Hub id or local folder; "
        "DINOv2, SigLIP or CLIP).",
    )
    clip_model: str = Field(
        "openai/clip-vit-base-patch32",
        description="Text-image model for prompt adherence (Hub id or local folder; CLIP or SigLIP).",
    )
    min_effect: float = Field(
        0.02, ge=0, description="Least relative latent distance between renders with and without the LoRA."
    )
    min_trigger: float = Field(
        0.05, ge=0, description="Least share of the LoRA's effect the trigger word must carry (when there is one)."
    )
    require_trigger: bool = Field(
        False,
        description="Fail the job (trigger_ignored) when the trigger word carries less than min_trigger of the "
        "LoRA's effect; off: a warning (styles, and datasets whose every caption starts with the word, work "
        "without it).",
    )
    memorization: float = Field(
        0.97, gt=0, le=1, description="A sample this similar (cosine) to one training image counts as memorized."
    )
