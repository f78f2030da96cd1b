"""TrainSpec and its smaller sections: the one description of a training job that every front door builds."""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from loraflow import catalog
from loraflow.spec.compute import ComputeSpec
from loraflow.spec.dataset import DatasetSpec
from loraflow.spec.evaluation import EvaluationSpec
from loraflow.spec.strict import Strict
from loraflow.spec.targets import NotificationTarget, PublishSpec

EngineName = Literal["builtin", "ai-toolkit", "kohya", "musubi", "fal"]
TRIGGER_PLACEHOLDER = "[trigger]"


# Where a number is stored or used: step counts are 32-bit integers in the job store (PostgreSQL INTEGER),
# seeds go to numpy's and torch's generators (numpy takes 0 .. 2**32 - 1). A larger value is refused when
# the spec is read, naming the field, instead of overflowing in the store or the trainer.
INT32 = 2**31 - 1
SEED_MAX = 2**32 - 1

class EngineSpec(Strict):
    name: EngineName = Field(
        description="builtin, ai-toolkit, kohya, musubi (Wan video LoRAs) or fal (hosted: fal.ai's Flux LoRA trainer)."
    )
    version: str | None = Field(None, description="Engine pin (git commit or image tag); the tested pin if unset.")
    options: dict[str, Any] = Field(default_factory=dict, description="Engine-specific keys passed through.")


class NetworkSpec(Strict):
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank (dim).")
    alpha: float = Field(16, gt=0, description="LoRA alpha; strength scale is alpha/rank.")
    targets: list[str] | Literal["attention", "default", "all"] = Field(
        "default",
        description="Module names (suffixes) to train, or a preset: attention, default (attention + MLP), all.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class TrainingSpec(Strict):
    steps: int | None = Field(1000, ge=1, le=INT32, description="Optimizer steps; set null to train by epochs.")
    epochs: int | None = Field(None, ge=1, le=INT32, description="Epochs, used when steps is null.")
    batch_size: int = Field(1, ge=1, le=INT32)
    gradient_accumulation: int = Field(1, ge=1, le=INT32)
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["constant", "linear", "cosine", "cosine_with_restarts"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0, le=INT32)
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "adafactor"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    resolution: list[int] = Field(default_factory=lambda: [1024], description="Bucket base sizes in pixels.")
    seed: int = Field(42, ge=0, le=SEED_MAX)
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    gradient_checkpointing: bool = True
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile of the transformer's repeated blocks (builtin engine); auto: where measured faster.",
    )
    cache_latents: bool = True
    cache_text_embeddings: bool = True
    timestep_sampling: Literal["uniform", "sigmoid", "logit_normal", "shift"] = "sigmoid"
    timestep_shift: float = Field(3.0, gt=0, description="Shift for `shift` timestep sampling.")
    guidance_scale: float = Field(1.0, ge=0, description="Guidance embedding value during training (dev).")
    quantize: Literal["none", "fp8", "nf4", "qfloat8"] = "none"
    low_vram: bool = False
    blocks_to_swap: int = Field(0, ge=0, le=35)
    vram_preset: Literal[12, 16, 24, 48, 80] | None = Field(
        None, description="Apply the catalog's settings for a card of this many GB."
    )

    @field_validator("resolution")
    @classmethod
    def _resolutions(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one resolution, e.g. [1024]")
        for res in value:
            if res < 16 or res % 16:
                down, up = max(16, res // 16 * 16), max(16, -(-res // 16) * 16)
                near = f"{down}" if down == up else f"{down} or {up}"
                usual = min((512, 768, 1024, 1280, 1536), key=lambda size: abs(size - res))
                raise ValueError(
                    f"{res} is not a multiple of 16 of at least 16; use {near} (the nearest), or {usual}"
                    " (a size models are usually trained at)"
                )
        return sorted(set(value))

    @model_validator(mode="after")
    def _length(self) -> TrainingSpec:
        if self.steps is None and self.epochs is None:
            raise ValueError("set training.steps or training.epochs")
        return self


class SamplingSpec(Strict):
    prompts: list[str] = Field(
        default_factory=lambda: ["a photo of [trigger]"],
        description="Prompts rendered at each sample point; [trigger] becomes the trigger word. Empty: the "
        "dataset's first two captions.",
    )
    every_n_steps: int = Field(250, ge=0, le=INT32, description="0 samples only at the end.")
    at_end: bool = True
    width: int = Field(1024, ge=16)
    height: int = Field(1024, ge=16)
    seed: int = Field(42, ge=0, le=SEED_MAX)
    guidance_scale: float = Field(3.5, ge=0)
    steps: int = Field(20, ge=1, le=1000)
    controls: list[str | list[str]] = Field(
        default_factory=list,
        description="Edit models: the control image(s) each prompt edits, by file name in dataset.control (one "
        "entry: every prompt). Empty: the first pair's controls.",
    )


class CheckpointSpec(Strict):
    every_n_steps: int = Field(250, ge=1, le=INT32)
    keep_last: int = Field(4, ge=1, le=INT32)


class OutputSpec(Strict):
    lora_format: Literal["kohya", "diffusers"] = Field(
        "kohya", description="Key layout of the LoRA file: kohya/ComfyUI (default) or diffusers/peft."
    )
    dtype: Literal["fp16", "bf16", "fp32"] = "bf16"


class MonitorSpec(Strict):
    stall_minutes: float = Field(15, gt=0, description="No progress for this long (outside loading) is a stall.")
    gpu_idle_minutes: float = Field(5, gt=0)
    on_stall: Literal["notify", "restart", "fail"] = "restart"
    max_restarts: int = Field(2, ge=0)


class BudgetSpec(Strict):
    max_usd: float | None = Field(None, gt=0, description="Refuse or stop the job above this cost.")
    max_hours: float | None = Field(None, gt=0)
    warn_fraction: float = Field(0.8, gt=0, lt=1)


class WandbSpec(Strict):
    enabled: bool = False
    project: str = "loraflow"
    entity: str | None = None


class TrainSpec(Strict):
    name: str = Field(description="Job and output name: letters, digits, dash, underscore, dot.")
    dataset: DatasetSpec
    base_model: str = Field(
        description="Catalog id (tiny-flux, flux-dev, flux-schnell, sdxl, qwen-image, flux2-dev, flux2-klein-base-4b, "
        "flux2-klein-base-9b, flux-kontext-dev, qwen-image-edit-2509, qwen-image-edit-2511, chroma, wan2.1-t2v-1.3b, "
        "wan2.1-t2v-14b, wan2.1-i2v-14b, wan2.2-t2v-a14b, wan2.2-i2v-a14b) or a local folder."
    )
    model_family: str | None = Field(
        None, description="For a local base-model folder: the catalog id whose defaults apply (default flux-dev)."
    )
    engine: EngineSpec
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    checkpointing: CheckpointSpec = Field(default_factory=CheckpointSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    monitor: MonitorSpec = Field(default_factory=MonitorSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    publish: PublishSpec = Field(default_factory=PublishSpec)
    notifications: list[NotificationTarget] = Field(default_factory=list)
    wandb: WandbSpec = Field(default_factory=WandbSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
            raise ValueError("use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> TrainSpec:
        """Pairs where the model needs them, none where it cannot use them (named before anything starts)."""
        entry, control = self.catalog_entry, self.dataset.control
        if entry.edit and not control:
            raise ValueError(f"dataset.control: {entry.name} trains on pairs; name the subfolder of the dataset that "
                             "holds the control images (e.g. control)")
        if control and not entry.controls:
            raise ValueError(f"dataset.control: {entry.name} does not train from control images; remove it or use "
                             "an edit model (flux-kontext-dev, qwen-image-edit-2509, qwen-image-edit-2511)")
        named = self.sampling.controls
        if named and not control:
            raise ValueError("sampling.controls: control images are named for samples but dataset.control is unset")
        if len(named) > 1 and len(named) != len(self.sampling.prompts):
            raise ValueError(f"sampling.controls: {len(named)} entries for {len(self.sampling.prompts)} prompts; "
                             "give one per prompt, or one for all")
        for i, item in enumerate(named):
            if isinstance(item, list) and not 0 < len(item) <= entry.controls:
                raise ValueError(f"sampling.controls[{i}]: give 1 to {entry.controls} control images")
        return self

    @property
    def catalog_entry(self) -> catalog.BaseModel:
        return catalog.get_base_model(self.model_family or catalog_id(self.base_model))

    def substitute_trigger(self, text: str) -> str:
        return text.replace(TRIGGER_PLACEHOLDER, self.dataset.trigger_word or "").strip()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def catalog_id(base_model: str) -> str:
    return base_model if base_model in catalog.base_models() else "flux-dev"


def looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or "/" in value or "\\" in value
