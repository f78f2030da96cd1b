"""The service's maxima: how much one request, one user and one spec may cost the operator.

A spec through `loraflow serve` is someone else's data, and some of its knobs spend the operator's
machines, money or attention without bound (a 65536x65536 sample, `batch_size: 100000`, 64 GPUs,
`heartbeat_minutes: 1e9` that switches off a rented host's dead-man switch, 5,000 webhooks). Each such
knob has a service maximum here, refused by name with the limit; the request-level bounds (spec text,
body sizes, concurrent work, streams, upload rate) live here too, so the operator sets them all in one
place (`LORAFLOW_MAX_*`, docs/service.md). The CLI on one's own machine has no maxima.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

# knob -> (environment variable, where in the spec, what it costs)
KNOBS: dict[str, tuple[str, str]] = {
    "resolution": ("LORAFLOW_MAX_RESOLUTION", "training.resolution"),
    "sample_size": ("LORAFLOW_MAX_SAMPLE_SIZE", "sampling.width/height"),
    "sample_prompts": ("LORAFLOW_MAX_SAMPLE_PROMPTS", "sampling.prompts"),
    "batch_size": ("LORAFLOW_MAX_BATCH_SIZE", "training.batch_size"),
    "epochs": ("LORAFLOW_MAX_EPOCHS", "training.epochs"),
    "keep_last": ("LORAFLOW_MAX_KEEP_LAST", "checkpointing.keep_last"),
    "max_retries": ("LORAFLOW_MAX_RETRIES", "compute.max_retries"),
    "max_restarts": ("LORAFLOW_MAX_RESTARTS", "monitor.max_restarts"),
    "gpus": ("LORAFLOW_MAX_GPUS", "compute.gpus"),
    "disk_gb": ("LORAFLOW_MAX_DISK_GB", "compute.gpu.disk_gb"),
    "heartbeat_minutes": ("LORAFLOW_MAX_HEARTBEAT_MINUTES", "compute.heartbeat_minutes"),
    "webhooks": ("LORAFLOW_MAX_WEBHOOKS", "notifications"),
}


@dataclass(frozen=True)
class Maxima:
    """Spec knobs (first block) and request bounds (second block), with defaults a small platform can
    live with; every one is an environment variable (`LORAFLOW_MAX_...`, see KNOBS and `from_env`)."""

    resolution: int = 2048
    sample_size: int = 2048
    sample_prompts: int = 16
    batch_size: int = 16
    epochs: int = 1000
    keep_last: int = 20
    max_retries: int = 5
    max_restarts: int = 5
    gpus: int = 4
    disk_gb: int = 500
    heartbeat_minutes: float = 60.0
    webhooks: int = 10

    spec_bytes: int = 64 << 10  # spec text, YAML or JSON
    spec_nodes: int = 5_000  # values in a spec, YAML aliases expanded
    body_bytes: int = 1 << 20  # any request body but an upload (captions, specs, JSON)
    work_per_user: int = 2  # parsing, dataset and image checks, unpacking at once per user
    streams_per_user: int = 8  # open server-sent event streams per user
    uploads_per_minute: int = 10  # uploads and job creations with an upload, per user
    requests_per_user: int = 24  # requests in flight at once per token or session (streams included)

    @classmethod
    def from_env(cls) -> Maxima:
        env, values = os.environ, {}
        extra = {
            "spec_bytes": "LORAFLOW_MAX_SPEC_BYTES",
            "spec_nodes": "LORAFLOW_MAX_SPEC_NODES",
            "body_bytes": "LORAFLOW_MAX_BODY_BYTES",
            "work_per_user": "LORAFLOW_MAX_WORK_PER_USER",
            "streams_per_user": "LORAFLOW_MAX_STREAMS_PER_USER",
            "uploads_per_minute": "LORAFLOW_MAX_UPLOADS_PER_MINUTE",
            "requests_per_user": "LORAFLOW_MAX_REQUESTS_PER_USER",
        }
        names = {k: v[0] for k, v in KNOBS.items()} | extra
        for f in fields(cls):
            raw = env.get(names[f.name])
            if raw:
                values[f.name] = float(raw) if f.type == "float" else int(float(raw))
        return cls(**values)


def _written(raw: Any, path: str) -> bool:
    for key in path.split("/")[0].split("."):
        if not isinstance(raw, dict) or key not in raw:
            return False
        raw = raw[key]
    return True


def _seen(spec: Any) -> dict[str, float]:
    t, c = spec.training, spec.compute
    return {
        "resolution": max(t.resolution),
        "sample_size": max(spec.sampling.width, spec.sampling.height),
        "sample_prompts": len(spec.sampling.prompts),
        "batch_size": t.batch_size,
        "epochs": t.epochs or 0,
        "keep_last": spec.checkpointing.keep_last,
        "max_retries": c.max_retries,
        "max_restarts": spec.monitor.max_restarts,
        "gpus": c.gpus,
        "disk_gb": c.gpu.disk_gb,
        "heartbeat_minutes": c.heartbeat_minutes,
        "webhooks": len(spec.notifications),
    }


def _lower(spec: Any, knob: str, limit: float) -> None:
    """A default (the schema's or the catalog's) above the operator's maximum is lowered to it."""
    t, c = spec.training, spec.compute
    whole = int(limit)
    if knob == "resolution":
        t.resolution = sorted({min(r, whole) for r in t.resolution})
    elif knob == "sample_size":
        spec.sampling.width, spec.sampling.height = min(spec.sampling.width, whole), min(spec.sampling.height, whole)
    elif knob == "sample_prompts":
        spec.sampling.prompts = spec.sampling.prompts[:whole]
    elif knob == "heartbeat_minutes":
        c.heartbeat_minutes = limit
    else:
        owner, attr = {
            "batch_size": (t, "batch_size"), "epochs": (t, "epochs"), "keep_last": (spec.checkpointing, "keep_last"),
            "max_retries": (c, "max_retries"), "max_restarts": (spec.monitor, "max_restarts"),
            "gpus": (c, "gpus"), "disk_gb": (c.gpu, "disk_gb"),
        }.get(knob, (None, ""))  # fmt: skip
        if owner is not None:
            setattr(owner, attr, whole)


def over_maxima(raw: Any, spec: Any, maxima: Maxima) -> list[str]:
    """One problem line per knob the user set above its service maximum, naming the field and the limit;
    a default above it is lowered instead (the operator's maximum is the service's default then)."""
    out = []
    for knob, value in _seen(spec).items():
        limit = getattr(maxima, knob)
        if value <= limit:
            continue
        env, where = KNOBS[knob]
        if not _written(raw, where):
            _lower(spec, knob, limit)
            continue
        shown = f"{value:g}"
        if knob in ("webhooks", "sample_prompts"):
            shown = f"{value:g} {'targets' if knob == 'webhooks' else 'prompts'}"
        out.append(f"{where}: {shown} is over this service's limit {limit:g} ({env}). Fix: give at most {limit:g}")
    return out
