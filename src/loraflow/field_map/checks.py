"""The map applied: the rule for one field on one engine, and every value a spec's engine cannot honour."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loraflow.field_map.fields import FIELDS, LORAFLOW
from loraflow.field_map.rules import Rule

if TYPE_CHECKING:
    from loraflow.spec import TrainSpec


def rule_for(field: str, engine: str) -> Rule:
    """The rule for one leaf field on one engine (a loraflow-handled section when it has no own row)."""
    if field in FIELDS:
        return FIELDS[field][engine]
    for prefix, how in LORAFLOW.items():
        if field == prefix or field.startswith(prefix + "."):
            return Rule("loraflow", how)
    raise KeyError(field)


def refusals(spec: TrainSpec) -> list[str]:
    """One line per value the spec's engine cannot honour: the field, the engine, why, and the fix."""
    engine = spec.engine.name  # one of ENGINES: a hosted engine's keys are checked by spec.refused_fields
    lines = []
    for field, rules in FIELDS.items():
        check = rules[engine].refuse
        found = check(spec) if check else None
        if found:
            why, fix = found
            lines.append(f"{field}: engine {engine} cannot honour this value: {why}. Fix: {fix}.")
    return lines
