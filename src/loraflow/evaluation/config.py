"""The evaluation process's one config file (`evaluation/config.json` in the job folder), rendered from a spec.

Like the trainer, the evaluation process reads only this file: it knows nothing about the job store,
hosts or providers, so it runs unchanged where the base model is, this machine or a rented GPU.
Paths are as seen on that host.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from loraflow.spec import TRIGGER_PLACEHOLDER, TrainSpec
from loraflow.trainer.config import ConfigFile


class LoraUnderTest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # "step-000020" or "final"
    path: str
    step: int


class EvalConfig(ConfigFile):
    job_id: str
    model_path: str
    loras: list[LoraUnderTest]
    prompts: list[str]  # with the trigger word written in
    trigger_word: str | None = None
    reference_dir: str  # the images samples should look like: held-out ones, or the training set
    reference_kind: str = "holdout"  # holdout | training
    training_dir: str  # memorization compares with every training image
    out_dir: str  # scorecard.json and the renders go here
    seeds: list[int] = [0, 1]
    width: int = 512
    height: int = 512
    steps: int = 12
    guidance: float = 3.5
    max_sequence_length: int = 512
    precision: str = "bf16"
    device: str = "auto"
    image_encoder: str = "facebook/dinov2-small"
    clip_model: str = "openai/clip-vit-base-patch32"
    face_model: str | None = None  # an ArcFace .onnx the operator provides (LORAFLOW_ARCFACE_MODEL)
    min_effect: float = 0.02
    min_trigger: float = 0.05
    require_trigger: bool = False  # trigger_ignored fails the job instead of warning
    memorization: float = 0.97


def without_trigger(prompt: str, trigger: str | None) -> str:
    """The prompt with the trigger word taken out (and the comma or space it leaves tidied)."""
    if not trigger:
        return prompt
    text = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", "", prompt)
    text = re.sub(r"\s+([,.;:])", r"\1", re.sub(r"\s{2,}", " ", text))
    return re.sub(r"^[\s,;:]+|[\s,;:]+$", "", text) or prompt


def eval_prompts(spec: TrainSpec) -> list[str]:
    """The evaluation prompts with the trigger written in: one that does not name the trigger gets it first."""
    raw = spec.evaluation.prompts or spec.sampling.prompts or [f"a photo of {TRIGGER_PLACEHOLDER}"]
    trigger = spec.dataset.trigger_word
    out = []
    for prompt in raw:
        text = spec.substitute_trigger(prompt)
        if trigger and not re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", text):
            text = f"{trigger}, {text}" if text else trigger
        out.append(text)
    return out


def eval_size(spec: TrainSpec) -> tuple[int, int]:
    """The sampling aspect, its longest side at most evaluation.size, in multiples of 16."""
    w, h = spec.sampling.width, spec.sampling.height
    scale = min(1.0, spec.evaluation.size / max(w, h))
    return max(16, round(w * scale / 16) * 16), max(16, round(h * scale / 16) * 16)
