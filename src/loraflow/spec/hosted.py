"""A hosted engine takes a few parameters: any other key the user changed is refused by name, not ignored."""

from __future__ import annotations

from typing import Any

from loraflow import catalog
from loraflow.spec.models import TrainSpec
from loraflow.spec.resolving import resolve


def _leaf_diffs(path: str, mine: Any, theirs: Any) -> list[str]:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        out: list[str] = []
        for key in mine:
            out += _leaf_diffs(f"{path}.{key}", mine[key], theirs.get(key))
        return out
    return [] if mine == theirs else [path]


def _at(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _trigger_only(spec: TrainSpec) -> bool:
    """Every caption is the trigger word alone (so an option that trains on the trigger word drops nothing)."""
    caps = spec.dataset.captions
    return caps.backend == "template" and caps.template.strip() == "[trigger]"


def refused_fields(spec: TrainSpec) -> list[str]:
    """The keys a hosted engine's API cannot honour, set to anything but what that engine does.

    A hosted trainer (catalog/hosted.yaml) takes a few parameters; any other key that differs from the
    engine's own defaults would be silently ignored, so it is refused here, by name, with the fix."""
    rules = catalog.hosted_engines().get(spec.engine.name)
    if not rules:
        return []
    name = spec.engine.name
    out: list[str] = []
    allowed = rules.get("base_models") or []
    if spec.base_model not in allowed:
        return [
            f"base_model: engine {name} trains only {', '.join(allowed)} (got {spec.base_model!r}). "
            f"Fix: use base_model: {allowed[0]}, or another engine for this model"
        ]
    for key, value in spec.engine.options.items():
        kind = (rules.get("options") or {}).get(key)
        if kind is None:
            keys = ", ".join(rules.get("options") or {}) or "none"
            out.append(f"engine.options.{key}: engine {name} has no such option (it takes: {keys}). Fix: remove it")
        elif kind == "bool" and not isinstance(value, bool):
            out.append(f"engine.options.{key}: give true or false (got {value!r})")
        elif value is True and key in (rules.get("ignores_captions") or []) and not _trigger_only(spec):
            out.append(
                f"engine.options.{key}: engine {name} then ignores the captions and trains on the trigger word "
                f"alone. Fix: remove it to train on the captions, or set dataset.captions to {{backend: template, "
                f"template: '[trigger]'}} to say the trigger word alone is meant"
            )
    base = {"name": spec.name, "dataset": {"path": spec.dataset.path}, "base_model": spec.base_model}
    baseline = TrainSpec.model_validate(resolve({**base, "engine": {"name": name}})).to_dict()
    mine = spec.to_dict()
    takes = ", ".join(rules.get("honours") or {})
    for path in rules.get("refuses") or []:
        for leaf in _leaf_diffs(path, _at(mine, path), _at(baseline, path)):
            out.append(
                f"{leaf}: engine {name} cannot honour it ({rules['app']} takes only {takes}"
                f"{' and engine.options ' + ', '.join(rules.get('options') or {}) if rules.get('options') else ''}). "
                f"Fix: remove it, or train with engine ai-toolkit or kohya to set it"
            )
    return out
