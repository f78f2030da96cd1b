"""Pydantic's validation errors as one line per problem, with the closest valid key for a typo."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from loraflow.field_map.schema import unwrap_models
from loraflow.spec.aliases import other_trainer_key
from loraflow.spec.models import TrainSpec


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at the parent of `loc`, for close-match suggestions."""
    models: list[type[BaseModel]] = [TrainSpec]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(str(part))
            if field is not None:
                nxt += unwrap_models(field.annotation)
        if nxt:
            models = nxt
    names: list[str] = []
    for model in models:
        names += [n for n in model.model_fields if n not in names]
    return names


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("huggingface", "s3", "comfydeploy"):
            continue  # discriminator tags pydantic inserts into the path
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def explain(error: ValidationError) -> list[str]:
    """One line per problem: the key's path, what is wrong and, for typos, the closest valid key."""
    lines: list[str] = []
    for err in error.errors():
        loc = tuple(err["loc"])
        path = _format_loc(loc)
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            section = _format_loc(loc[:-1]) if len(loc) > 1 else ""
            theirs = other_trainer_key(section, key)
            close = difflib.get_close_matches(key, _fields_at(loc), n=1, cutoff=0.5)
            if theirs:
                hint = f" Did you mean '{theirs}'? ('{key}' is another trainer's name for it.)"
            else:
                hint = f" Did you mean '{close[0]}'?" if close else ""
            lines.append(f"{path}: unknown key.{hint}")
        elif err["type"] == "missing":
            lines.append(f"{path}: required key is missing.")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
            lines.append(f"{path}: {msg}{shown}.")
    return lines
