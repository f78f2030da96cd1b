"""A mapping into a TrainSpec, with every problem (secrets, unknown keys, values the engine refuses) named at once."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from loraflow.errors import SpecError, UserInputError
from loraflow.field_map.checks import refusals
from loraflow.field_map.rules import ENGINES
from loraflow.spec.explain import explain
from loraflow.spec.hosted import refused_fields
from loraflow.spec.models import TrainSpec
from loraflow.spec.resolving import resolve
from loraflow.spec.secret_scan import find_secrets


def parse_spec(raw: Any, source: str = "spec") -> TrainSpec:
    if not isinstance(raw, dict):
        raise SpecError(source, ["the spec must be a mapping of keys (name, dataset, base_model, ...)."])
    problems = find_secrets(raw)
    try:
        resolved = resolve(raw)
    except UserInputError as exc:
        # An unknown base model must not hide the other mistakes: check the rest under flux-dev's defaults.
        problems.append(f"base_model: {exc.render()}" if exc.where is None else exc.render())
        rest = {k: v for k, v in raw.items() if k not in ("base_model", "model_family")}
        try:
            resolved = resolve({**rest, "base_model": "flux-dev"})
        except UserInputError:  # the engine does not train flux-dev either: that one problem is the answer
            raise SpecError(source, problems) from None
    try:
        spec = TrainSpec.model_validate(resolved)
    except ValidationError as exc:
        raise SpecError(source, [*problems, *explain(exc)]) from None
    # values the chosen engine cannot honour: a hosted one by its API's keys, the others by the field map
    problems += refusals(spec) if spec.engine.name in ENGINES else refused_fields(spec)
    if problems:
        raise SpecError(source, problems)
    return spec
