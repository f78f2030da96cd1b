"""From a job's spec to what its LoRA files must be (Expectation) and where its base weights may be here."""

from __future__ import annotations

import contextlib
from pathlib import Path

from loraflow import paths
from loraflow.lora_check.base import CATALOG_GEOMETRY, BaseWeights, geometry_from_config, load_base
from loraflow.lora_check.check import Expectation
from loraflow.spec import TrainSpec


def base_candidates(spec: TrainSpec) -> list[Path]:
    """Where the spec's base model may be on this machine, most exact first: a local folder or file named
    by base_model, the builtin tiny model's folder, the engine's model files (engine.options.models_dir),
    the Hugging Face cache (never downloaded: local files only)."""
    entry = spec.catalog_entry
    if spec.base_model != entry.id:
        return [Path(spec.base_model).expanduser()]
    out: list[Path] = []
    if entry.source.startswith("builtin:"):
        out.append(paths.models_root() / entry.source.split(":", 1)[1])
    models = Path(str(spec.engine.options.get("models_dir", "models"))).expanduser()
    for files in (entry.musubi_files, entry.kohya_files):
        for role in ("dit", "transformer", "checkpoint"):
            if files and role in files:
                out.append(models / str(files[role]))
    if entry.hub_id:
        with contextlib.suppress(Exception):  # not cached, or huggingface_hub not installed: judged without it
            from huggingface_hub import snapshot_download

            out.append(Path(snapshot_download(entry.hub_id, local_files_only=True)))
    return out


def expectation(spec: TrainSpec, base: BaseWeights | None = None) -> Expectation:
    """The spec as its engine renders it; the model's depth from its local config, else the catalog's."""
    geometry = None
    if base is not None:
        folder = Path(base.where)
        geometry = geometry_from_config(folder if folder.is_dir() else folder.parent)
    if geometry is None:
        geometry = CATALOG_GEOMETRY.get(spec.catalog_entry.id) if spec.base_model == spec.catalog_entry.id else None
    n, t = spec.network, spec.training
    return Expectation(
        arch=spec.catalog_entry.arch,
        rank=n.rank,
        alpha=float(n.alpha),
        targets=n.targets,
        geometry=geometry,
        engine=spec.engine.name,
        learning_rate=t.learning_rate,
        max_grad_norm=t.max_grad_norm,
    )


def base_for(spec: TrainSpec) -> BaseWeights | None:
    return load_base(base_candidates(spec))
