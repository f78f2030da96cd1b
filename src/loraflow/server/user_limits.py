"""What a service user's spec may not exceed or name: the operator's dataset limits and webhook addresses.

A spec's dataset limits guard the server that reads the dataset, so a user may lower them but never
raise them past the operator's (ServiceConfig.max_pixels, max_archive_bytes, and the upload size):
a value the user set above them is refused, a default above them is lowered to them. The stored spec
carries the bounded values, so every later stage (prepare, a resume) reads with the same limits.
"""

from __future__ import annotations

from typing import Any

from loraflow.notify.addresses import allow_private_from_env, check_webhook_url
from loraflow.server.problems import Problem
from loraflow.spec import TrainSpec


def archive_bound(cfg: Any) -> int:
    """The most bytes any dataset may expand to on this service."""
    return min(int(cfg.max_archive_bytes), int(cfg.max_upload_mb) << 20)


def bound_spec(spec: TrainSpec, cfg: Any, service_user: bool = True) -> TrainSpec:
    """The spec with its dataset limits at most the operator's; 422 naming the key for a limit set above
    them or, for a service user, a webhook to a non-public address (unless LORAFLOW_WEBHOOK_ALLOW_PRIVATE=1)."""
    checks = spec.dataset.checks
    caps = {"max_pixels": int(cfg.max_pixels), "max_archive_bytes": archive_bound(cfg)}
    for key, cap in caps.items():
        if key in checks.model_fields_set and getattr(checks, key) > cap:
            raise Problem(
                422,
                "spec not allowed",
                f"dataset.checks.{key} {getattr(checks, key)} is over this service's limit of {cap}",
                key=f"dataset.checks.{key}",
            )
    allow_private = not service_user or allow_private_from_env()
    for i, target in enumerate(spec.notifications):
        if target.url and (why := check_webhook_url(target.url, allow_private)):
            raise Problem(422, "spec not allowed", f"notifications[{i}].url {why}", key=f"notifications[{i}].url")
    bounded = checks.model_copy(update={k: min(getattr(checks, k), cap) for k, cap in caps.items()})
    return spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"checks": bounded})})
