"""The base model's weights a LoRA is judged against, when they are on this machine.

Only headers are read to index a base (safetensors keeps them at the front of the file); a layer's weights
are read when a LoRA module adapts it, one at a time, so judging a LoRA against FLUX.1 reads ~1/6 of it
at most and never holds more than one layer. Where no base is on this machine (a model cached only on a
rented host, a catalog model never downloaded here), the check says so and judges updates against an
absolute floor instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from loraflow.lora_check.reading import Unreadable, open_tensors

# Prefixes the same weight carries in different files (ComfyUI single files, diffusers folders, kohya's).
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "unet.", "model.")
# Depth of the catalog's models, for when their config is not on this machine (their diffusers configs:
# FLUX.1 and Kontext num_layers 19 / num_single_layers 38; Qwen-Image and its Edit num_layers 60; Wan 1.3B 30
# and every 14B model 40 blocks).
CATALOG_GEOMETRY: dict[str, dict[str, int]] = {
    "flux-dev": {"double": 19, "single": 38},
    "flux-schnell": {"double": 19, "single": 38},
    "flux-kontext-dev": {"double": 19, "single": 38},
    "qwen-image": {"blocks": 60},
    "qwen-image-edit-2509": {"blocks": 60},
    "qwen-image-edit-2511": {"blocks": 60},
    "wan2.1-t2v-1.3b": {"blocks": 30},
    "wan2.1-t2v-14b": {"blocks": 40},
    "wan2.2-t2v-a14b": {"blocks": 40},
    "wan2.2-i2v-a14b": {"blocks": 40},
    "wan2.1-i2v-14b": {"blocks": 40},
}


class BaseWeights:
    """An index of one base model's weight files by key (prefixes stripped); norms read on demand."""

    def __init__(self, files: list[Path], where: str) -> None:
        self.files = files
        self.where = where  # said in the report: what the updates were judged against
        self.index: dict[str, tuple[Path, str]] = {}
        for path in files:
            with open_tensors(path) as f:
                for key in f.names():
                    self.index.setdefault(_strip(key), (path, key))
        self._norms: dict[str, float] = {}

    def norm(self, alternatives: tuple[tuple[str, ...], ...]) -> float | None:
        """The Frobenius norm of the layer a module adapts (fused parts together), in the first base layout
        whose keys are all here; None when none is."""
        for keys in alternatives:
            if keys and all(k in self.index for k in keys):
                return math.sqrt(sum(self._norm(k) ** 2 for k in keys))
        return None

    def _norm(self, key: str) -> float:
        if key not in self._norms:
            path, stored = self.index[key]
            with open_tensors(path) as f:
                self._norms[key] = float(np.linalg.norm(f.get(stored).astype(np.float64)))
        return self._norms[key]


def _strip(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def weight_files(folder: Path) -> list[Path]:
    """A model's denoiser weights in a folder: diffusers' transformer/ or unet/, else the folder's own files."""
    for sub in ("transformer", "unet", "."):
        found = sorted((folder / sub).glob("*.safetensors"))
        if found:
            return found
    return []


def geometry_from_config(folder: Path) -> dict[str, int] | None:
    """Block counts from a model folder's config (diffusers' transformer/config.json, or Wan's own)."""
    for path in (folder / "transformer" / "config.json", folder / "config.json"):
        if path.is_file():
            config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            if "num_single_layers" in config:
                return {"double": int(config["num_layers"]), "single": int(config["num_single_layers"])}
            if "num_layers" in config:
                return {"blocks": int(config["num_layers"])}
    return None


def load_base(candidates: list[Path]) -> BaseWeights | None:
    """The first candidate (a model folder or a single weights file) that is on this machine and readable."""
    for candidate in candidates:
        files = [candidate] if candidate.is_file() else (weight_files(candidate) if candidate.is_dir() else [])
        if not files:
            continue
        try:
            return BaseWeights(files, str(candidate))
        except Unreadable:
            continue
    return None
