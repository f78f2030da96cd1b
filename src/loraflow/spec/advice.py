"""Warnings for a valid spec whose values are far from what works for its model.

A learning rate of 1e-2 on Flux is legal and trains noise; flux-dev unquantized on a 24 GB card is legal and
runs out of memory an hour later. Neither is an error (an expert may mean it), so these are warnings that
`spec validate`, `train` and the web UI show before anything runs, each with the usual value to try."""

from __future__ import annotations

from loraflow import catalog
from loraflow.errors import UserInputError
from loraflow.spec.models import TrainSpec

# How far from the model's usual learning rate a value may stray before it is worth a word.
LR_FACTOR_HIGH = 10.0
LR_FACTOR_LOW = 100.0
# An unquantized base above this size does not fit the common 24 GB consumer card.
CONSUMER_CARD_GB = 24


def _usual_learning_rate(spec: TrainSpec) -> float | None:
    model = spec.catalog_entry
    try:
        training = catalog.defaults_for(model, spec.engine.name, None).get("training", {})
    except UserInputError:  # an engine the catalog does not list for this model: no usual value to compare with
        return None
    value = training.get("learning_rate")
    return float(value) if isinstance(value, (int, float)) else None


def _learning_rate(spec: TrainSpec) -> list[str]:
    lr = spec.training.learning_rate
    if spec.training.optimizer == "prodigy":
        if not 0.1 <= lr <= 10:
            return [
                f"training.learning_rate: {lr:g} with prodigy, which sets its own step size and expects about 1.0. "
                "Fix: use learning_rate: 1.0 with prodigy."
            ]
        return []
    usual = _usual_learning_rate(spec)
    if usual is None:
        return []
    model = spec.catalog_entry.id
    if lr >= usual * LR_FACTOR_HIGH:
        return [
            f"training.learning_rate: {lr:g} is {lr / usual:.0f}x the usual {usual:g} for {model}; a rate this high "
            f"usually burns the LoRA (noise or a blank image within a few hundred steps). Fix: try {usual:g} to "
            f"{usual * 4:g}."
        ]
    if lr <= usual / LR_FACTOR_LOW:
        return [
            f"training.learning_rate: {lr:g} is {usual / lr:.0f}x below the usual {usual:g} for {model}; the LoRA "
            f"will hardly change in {spec.training.steps or 'these'} steps. Fix: try {usual:g}."
        ]
    return []


def _memory(spec: TrainSpec) -> list[str]:
    model = spec.catalog_entry
    t = spec.training
    if spec.compute.provider not in ("local", "ssh") or spec.engine.name == "fal":
        return []
    if model.min_vram_gb < 12 or t.vram_preset is not None or t.quantize != "none":
        return []
    return [
        f"training.vram_preset: not set, so {model.id} trains unquantized ({t.precision}), which needs more than "
        f"{CONSUMER_CARD_GB} GB of GPU memory. Fix: on a {CONSUMER_CARD_GB} GB card set training.vram_preset: "
        f"{CONSUMER_CARD_GB} (12 and 16 exist too); leave it unset only on a 48 GB or larger card."
    ]


def advice(spec: TrainSpec) -> list[str]:
    """Warnings, one line each, for values far from what usually works for this model (never errors)."""
    return [*_learning_rate(spec), *_memory(spec)]
