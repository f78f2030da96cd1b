"""Defaults that depend on another value, the same on every engine."""

from __future__ import annotations

from typing import Any


def prodigy_default(raw: dict[str, Any], merged: dict[str, Any]) -> dict[str, Any]:
    """With Prodigy and no learning rate of the user's own, the rate is 1.0 (Prodigy's own estimate) on every
    engine, not a catalog default meant for AdamW (which Prodigy would read as a 1e-4 multiplier)."""
    training = merged.get("training")
    user = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    if isinstance(training, dict) and training.get("optimizer") == "prodigy" and "learning_rate" not in user:
        merged["training"] = {**training, "learning_rate": 1.0}
    return merged
