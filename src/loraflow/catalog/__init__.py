"""The base-model catalog, GPU table, hosted engines and VRAM presets: the data behind a three-line spec
(read by the spec, the engines and the estimator; imports nothing of loraflow's but errors)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from loraflow.errors import UserInputError

ENGINES = ("builtin", "ai-toolkit", "kohya", "musubi", "fal")


@dataclass(frozen=True)
class BaseModel:
    id: str
    name: str
    arch: str
    source: str
    license: str
    gated: bool
    min_vram_gb: int
    default_engine: str
    engines: dict[str, dict[str, Any]]
    defaults: dict[str, Any]
    variant: str | None = None
    license_url: str | None = None
    assistant_lora: str | None = None
    kohya_files: dict[str, str] = field(default_factory=dict)
    musubi_task: str | None = None  # wan_train_network.py --task
    musubi_files: dict[str, str] = field(default_factory=dict)  # by the flag that names each file
    musubi_arch: str = "wan"  # which of musubi's script families trains it (engines/musubi_arch.py)
    musubi_args: list[str] = field(default_factory=list)  # given to its caching and training scripts alike
    kohya_model_type: str | None = None  # flux_train_network.py --model_type (chroma)
    aitk: dict[str, Any] = field(default_factory=dict)  # ai-toolkit's model: arch, name_or_path, qtype
    controls: int = 0  # most control images per target (an edit model trains on pairs); 0: none
    control_optional: bool = False  # pairs accepted but not required (FLUX.2's reference images)
    first_frame_control: bool = False  # image-to-video: each clip's first frame conditions it
    experts: dict[str, Any] = field(default_factory=dict)  # Wan 2.2 A14B: {boundary: timestep 0-1000}
    estimate_kind: str | None = None  # row of gpus.yaml `models` for its step time and download

    @property
    def edit(self) -> bool:
        """Trains on target/control pairs: a dataset without them is refused."""
        return self.controls > 0 and not self.control_optional

    @property
    def hub_id(self) -> str | None:
        return self.source[3:] if self.source.startswith("hf:") else None


def _load(name: str) -> dict[Any, Any]:
    text = resources.files("loraflow.catalog").joinpath(name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


@cache
def base_models() -> dict[str, BaseModel]:
    return {key: BaseModel(id=key, **value) for key, value in _load("base_models.yaml").items()}


@cache
def vram_presets() -> dict[int, dict[str, dict[str, Any]]]:
    return {int(k): v for k, v in _load("vram_presets.yaml").items()}


def get_base_model(model_id: str) -> BaseModel:
    models = base_models()
    if model_id not in models:
        import difflib

        close = difflib.get_close_matches(model_id, list(models), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(models)}"
        raise UserInputError(f"unknown base model '{model_id}'", fix=hint, where="base_model")
    return models[model_id]


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge `over` into a copy of `base`; nested dicts merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def defaults_for(model: BaseModel, engine: str, vram_preset: int | None) -> dict[str, Any]:
    """Catalog defaults for one model and engine, with a VRAM preset on top (user values go last)."""
    if engine not in model.engines:
        raise UserInputError(
            f"engine '{engine}' does not support base model '{model.id}'",
            fix=f"use one of: {', '.join(model.engines)}",
            where="engine.name",
        )
    merged = deep_merge(model.defaults, model.engines.get(engine) or {})
    if vram_preset is not None:
        presets = vram_presets()
        if vram_preset not in presets:
            raise UserInputError(
                f"no VRAM preset for {vram_preset} GB",
                fix=f"use one of: {', '.join(str(p) for p in presets)}",
                where="training.vram_preset",
            )
        merged = deep_merge(merged, presets[vram_preset].get(engine, {}))
    return merged


@cache
def hosted_engines() -> dict[str, dict[str, Any]]:
    """Engines that train through a provider's API: their price and the spec keys they honour
    (catalog/hosted.yaml)."""
    return _load("hosted.yaml")


@cache
def gpu_table() -> dict[str, Any]:
    """Seconds per step by GPU and per-model factors (catalog/gpus.yaml)."""
    return _load("gpus.yaml")
