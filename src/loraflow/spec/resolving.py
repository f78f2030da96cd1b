"""The catalog's defaults, the engine's overrides and the VRAM preset, merged under what the user wrote."""

from __future__ import annotations

from typing import Any

from loraflow import catalog
from loraflow.field_map.defaults import prodigy_default
from loraflow.spec.models import catalog_id, looks_like_path


def engine_name(raw: dict[str, Any], default: str) -> str:
    engine = raw.get("engine")
    if isinstance(engine, str):
        return engine
    if isinstance(engine, dict) and isinstance(engine.get("name"), str):
        return engine["name"]
    return default


def resolve(raw: dict[str, Any]) -> dict[str, Any]:
    """Merge catalog defaults, engine overrides and the VRAM preset under the user's own values."""
    raw = dict(raw)
    if isinstance(raw.get("engine"), str):
        raw["engine"] = {"name": raw["engine"]}
    base = raw.get("base_model")
    if not isinstance(base, str):
        return raw  # pydantic reports the missing or mistyped key
    family = raw.get("model_family")
    if base not in catalog.base_models() and not looks_like_path(base):
        catalog.get_base_model(base)  # raises with the closest catalog id
    model_id = family if isinstance(family, str) else catalog_id(base)
    model = catalog.get_base_model(model_id)
    engine = engine_name(raw, model.default_engine)
    raw["engine"] = {**(raw.get("engine") or {}), "name": engine}
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    preset = training.get("vram_preset")
    defaults = catalog.defaults_for(model, engine, preset if isinstance(preset, int) else None)
    return prodigy_default(raw, catalog.deep_merge(defaults, raw))
