"""Refuse a full-size model on a machine with no GPU before anything starts.

Without this check `loraflow train` with flux-dev on a laptop downloads tens of GB of weights and then
trains on the CPU for days (or runs out of memory). The tiny model and small local folders still train on
the CPU: that is how the demo, the tests and the real-engine CPU runs work."""

from __future__ import annotations

import os
from pathlib import Path

from loraflow.errors import UserInputError
from loraflow.nvidia_smi import gpu_stats
from loraflow.spec import TrainSpec

# A local base-model folder whose weights are larger than this is a full-size model, not a test model.
CPU_WEIGHTS_LIMIT = 4 * 1024**3


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors") if p.is_file())


def needs_gpu(spec: TrainSpec) -> bool:
    """Whether this spec's base model is too large to train on a CPU."""
    entry = spec.catalog_entry
    if spec.base_model == entry.id:
        return entry.min_vram_gb > 0
    folder = Path(spec.base_model)
    return folder.is_dir() and _weights_bytes(folder) > CPU_WEIGHTS_LIMIT


def require_local_gpu(spec: TrainSpec, gpus: list[dict] | None = None, probe: bool = True) -> None:
    """Raise when the spec trains a full-size model on this machine and this machine has no NVIDIA GPU.

    `gpus` is nvidia-smi's view (read here when not given); hosted and rented jobs are never refused."""
    if spec.compute.provider != "local" or spec.engine.name == "fal" or not needs_gpu(spec):
        return
    if os.environ.get("LORAFLOW_ALLOW_CPU") == "1":  # the operator's "I know": stand-in engines, experiments
        return
    stats = gpus if gpus is not None else (gpu_stats() if probe else None)
    if stats:
        return
    need = spec.catalog_entry.min_vram_gb
    raise UserInputError(
        f"{spec.base_model} needs an NVIDIA GPU (about {need} GB of memory or more) and this machine has none "
        "(nvidia-smi found nothing); nothing was started or downloaded",
        where="compute.provider",
        fix="rent one with compute.provider: vastai (see `loraflow estimate`), use your own GPU box with "
        "compute.provider: ssh, or try the pipeline on the CPU with base_model: tiny-flux",
    )
