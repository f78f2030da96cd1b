"""The builtin trainer's own config file (`engine/config.json`), rendered from a TrainSpec.

The trainer process reads only this file: it knows nothing about the job store, hosts or providers,
so the same process runs unchanged on the user's machine or on a rented GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict


class ConfigFile(BaseModel):
    """A process's one JSON config file: unknown keys refused, written atomically (the evaluation's too)."""

    model_config = ConfigDict(extra="forbid")

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class TrainerConfig(ConfigFile):

    name: str
    job_id: str
    model_path: str
    dataset_dir: str
    output_dir: str
    trigger_word: str | None = None
    # network
    rank: int
    alpha: float
    targets: str | list[str]
    lora_dropout: float = 0.0
    # schedule
    steps: int | None
    epochs: int | None = None
    batch_size: int = 1  # per process
    gradient_accumulation: int = 1  # per process, with `processes` of them
    # compute.gpus: processes the global batch is made for (global batch = processes x batch_size x
    # gradient_accumulation); run with fewer, each accumulates more (trainer/parallel.py)
    processes: int = 1
    ddp_timeout_s: float = 1800.0  # a collective waiting longer ends the run: a dead or hung rank
    learning_rate: float
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    resolutions: list[int]
    repeats: int = 1
    seed: int = 42
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    gradient_checkpointing: bool = True
    compile: Literal["auto", "on", "off"] = "auto"
    cache_latents: bool = True
    cache_text_embeddings: bool = True
    timestep_sampling: str = "sigmoid"
    timestep_shift: float = 3.0
    guidance_scale: float = 1.0
    quantize: str = "none"
    caption_dropout: float = 0.0
    max_sequence_length: int = 512
    # sampling
    sample_prompts: list[str] = []
    sample_every: int = 0
    sample_at_end: bool = True
    sample_width: int = 1024
    sample_height: int = 1024
    sample_seed: int = 42
    sample_guidance: float = 3.5
    sample_steps: int = 20
    # checkpoints and output
    checkpoint_every: int = 250
    keep_last: int = 4
    lora_format: Literal["kohya", "diffusers"] = "kohya"
    save_dtype: Literal["fp16", "bf16", "fp32"] = "bf16"
    metadata: dict[str, str] = {}
    device: str = "auto"
    # Pause after this many steps in this run (checkpoint first): time-slicing and tests of resume.
    stop_after_step: int | None = None
