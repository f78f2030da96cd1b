"""Step 7: what the run will cost and how long it takes, refused above the budget."""

from __future__ import annotations

import os
from typing import Any

from loraflow.notebook.settings import Settings, build_spec
from loraflow.notebook.stops import NotebookStop

# Seconds per optimizer step at 1024 px, rank 16 (reference notes: 4090 QLoRA ~3.5 s, H100 fp8 ~1.7 s).
SECONDS_PER_STEP = {
    "H200": 1.4,
    "H100": 1.7,
    "A100": 2.6,
    "L40S": 2.8,
    "RTX 6000 Ada": 2.8,
    "A6000": 3.6,
    "RTX 5090": 2.2,
    "RTX 4090": 3.5,
    "RTX 3090": 6.5,
    "A40": 6.5,
}


def instance_price() -> float | None:
    """This Vast.ai instance's own $/h, from the instance-scoped key Vast puts in the container."""
    cid, key = os.environ.get("CONTAINER_ID"), os.environ.get("CONTAINER_API_KEY")
    if not (cid and key):
        return None
    try:
        import httpx

        base = os.environ.get("VAST_URL", "https://console.vast.ai")
        data = httpx.get(
            f"{base}/api/v0/instances/{cid}/", headers={"Authorization": f"Bearer {key}"}, timeout=10
        ).json()
        inst = data.get("instances", data)
        return float(inst["dph_total"])
    except Exception:
        return None


def cost_guard(settings: Settings, gpu_name: str | None = None) -> dict[str, Any]:
    spec = build_spec(settings)
    price = instance_price() or settings.price_usd_per_hour
    name = gpu_name or next((g["name"] for g in ([] if spec.base_model == "tiny-flux" else _gpus())), "")
    per_step = next((v for k, v in SECONDS_PER_STEP.items() if k.lower() in name.lower()), 3.5)
    res = max(spec.training.resolution)
    per_step *= (res / 1024) ** 2 * max(1.0, spec.network.rank / 16) ** 0.25
    if spec.base_model == "tiny-flux":
        per_step = 0.05
    hours = (spec.training.steps or 1000) * per_step / 3600 + 0.25  # + loading, caching, samples, upload
    usd = hours * price if price is not None else None
    estimate = {
        "gpu": name or ("CPU" if spec.base_model == "tiny-flux" else "an unknown GPU"),
        "hours": round(hours, 2),
        "usd_per_hour": price,
        "usd": round(usd, 2) if usd is not None else None,
    }
    if usd is not None and spec.budget.max_usd and usd > spec.budget.max_usd:
        raise NotebookStop(
            f"estimated ${usd:.2f} is over the budget of ${spec.budget.max_usd:.2f}",
            fix="lower steps or resolution, or raise max_usd",
        )
    if spec.budget.max_hours and hours > spec.budget.max_hours:
        raise NotebookStop(
            f"estimated {hours:.1f} h is over max_hours {spec.budget.max_hours}", fix="lower steps or raise max_hours"
        )
    return estimate


def cost_line(estimate: dict[str, Any]) -> str:
    """The Cost cell's answer in one sentence a person reads at a glance."""
    hours = float(estimate["hours"])
    time_text = f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"
    if estimate.get("usd") is None:
        money = "cost unknown (set price_usd_per_hour, or run on a Vast.ai instance)"
    else:
        money = f"about ${estimate['usd']:.2f} at ${estimate['usd_per_hour']:.3f}/h"
    return f"about {time_text} on {estimate['gpu']}, {money}"


def _gpus() -> list[dict[str, Any]]:
    from loraflow.hosts.local import LocalHost

    return LocalHost().gpu_stats() or []
