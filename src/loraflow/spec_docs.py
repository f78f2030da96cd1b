"""The spec reference table, generated from the schema itself so the docs cannot drift from the code."""

from __future__ import annotations

import re
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from loraflow.field_map.schema import unwrap_models
from loraflow.spec import TrainSpec


def _type_name(annotation: Any) -> str:
    text = re.sub(r"loraflow\.spec\.(?:\w+\.)*", "", str(annotation).replace("typing.", ""))
    text = text.replace("<class '", "").replace("'>", "").replace("NoneType", "null")
    text = re.sub(  # a discriminated union (publish targets) reads as its members
        r"Annotated\[Union\[([^\]]+)\], FieldInfo\([^)]*discriminator='type'\)\]",
        lambda m: m.group(1).replace(", ", " | "),
        text,
    )
    return text.replace("|", "\\|")


def name_from_catalog(field: Any) -> bool:
    return field.annotation.__name__ == "EngineSpec" if isinstance(field.annotation, type) else False


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    elif name_from_catalog(field):
        return "from the catalog"
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`" if value not in (None, "") else ("`null`" if value is None else "`''`")


def rows(model: type[BaseModel] = TrainSpec, prefix: str = "") -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = unwrap_models(field.annotation)
        is_list = typing.get_origin(field.annotation) is list
        out.append((path, _type_name(field.annotation), _default(field), (field.description or "").replace("|", "\\|")))
        for sub in nested:
            label = f"{path}[]." if is_list else f"{path}."
            if len(nested) > 1:
                label = f"{path}[] ({sub.__name__})."
            out += rows(sub, label)
    return out


def markdown_table() -> str:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{p}` | {t} | {d} | {m} |" for p, t, d, m in rows()]
    return "\n".join(lines) + "\n"
