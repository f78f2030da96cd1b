"""Engines: adapters that render a trainer's config from the spec (builtin, ai-toolkit, kohya, musubi,
fal), launch it and turn its output into events; the field map says what each honours."""

# An external engine <name> has its engine class in <name>.py and, beside it, where its files live
# (<name>_files), how its config is rendered (<name>_config), how its console is read (<name>_parser)
# and, where it needs its own, how it resumes (kohya_resume, aitoolkit_resume); musubi shares the kohya
# family's argument blocks, launcher and error lines with kohya.

from __future__ import annotations

from loraflow.engines.base import Engine, EngineRequirements
from loraflow.spec import TrainSpec


def get_engine(name: str) -> Engine:
    if name == "builtin":
        from loraflow.engines.builtin import BuiltinEngine

        return BuiltinEngine()
    if name == "ai-toolkit":
        from loraflow.engines.aitoolkit import AitkEngine

        return AitkEngine()
    if name == "kohya":
        from loraflow.engines.kohya import KohyaEngine

        return KohyaEngine()
    if name == "musubi":
        from loraflow.engines.musubi import MusubiEngine

        return MusubiEngine()
    if name == "fal":
        from loraflow.engines.fal import FalEngine

        return FalEngine()
    from loraflow.errors import UserInputError

    raise UserInputError(f"unknown engine '{name}'", fix="use builtin, ai-toolkit, kohya, musubi or fal")


def preflight(spec: TrainSpec, force: bool = False) -> None:
    """Engine checks that must pass before a job is recorded (a hosted engine's key and price, say)."""
    if spec.engine.name == "fal":
        from loraflow.engines.fal import preflight as fal_preflight

        fal_preflight(spec, force)


__all__ = ["Engine", "get_engine", "preflight"]


def engine_needs(spec: TrainSpec) -> EngineRequirements:
    """What the spec's engine needs of a rented machine (VRAM, CUDA, image): handed to a provider, which
    rents for an engine without importing one."""
    return get_engine(spec.engine.name).requirements(spec)
