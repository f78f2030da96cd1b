"""Engines: adapters that render a trainer's config from the spec, launch it and read its output."""

from __future__ import annotations

from loraflow.engines.base import Engine


def get_engine(name: str) -> Engine:
    if name == "builtin":
        from loraflow.engines.builtin import BuiltinEngine

        return BuiltinEngine()
    from loraflow.errors import UserInputError

    raise UserInputError(f"the {name} engine is not available in this version", fix="use engine: builtin")


__all__ = ["Engine", "get_engine"]
