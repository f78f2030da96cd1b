"""The spec's models walked by annotation: the nested models a field holds and every leaf key's dotted path."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel


def unwrap_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field annotation can hold (through Optional, list, dict, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return unwrap_models(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType, list, dict, tuple):
        out: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            out += unwrap_models(arg)
        return out
    return []


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key of the spec, by dotted path (list items as one path)."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        nested = unwrap_models(field.annotation)
        path = f"{prefix}{name}"
        if nested:
            for sub in nested:
                out += [p for p in leaf_fields(sub, f"{path}.") if p not in out]
        else:
            out.append(path)
    return out
