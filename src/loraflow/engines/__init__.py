"""Engines: adapters that render a trainer's config from the spec, launch it and read its output."""

from __future__ import annotations

from loraflow.engines.base import Engine


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
    from loraflow.errors import UserInputError

    raise UserInputError(f"unknown engine '{name}'", fix="use builtin, ai-toolkit, kohya or musubi")


__all__ = ["Engine", "get_engine"]
