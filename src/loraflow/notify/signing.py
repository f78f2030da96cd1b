"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<body>", sent as `X-Loraflow-Signature: t=..,v1=..`.

The timestamp inside the signed text lets receivers refuse replays outside a window (5 minutes by
default). The secret comes from LORAFLOW_WEBHOOK_SECRET only: one's own jobs are signed with it, a
service user's with a secret derived from it and the user's name (HMAC), so no user can forge another's
webhooks, and nothing needs storing (`GET /api/webhook-secret` shows a user their own).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Any

HEADER = "X-Loraflow-Signature"
TOLERANCE_S = 300
SECRET_ENV = "LORAFLOW_WEBHOOK_SECRET"


def user_secret(shared: str, user: str) -> str:
    """A service user's own signing secret: the same on every server that shares LORAFLOW_WEBHOOK_SECRET."""
    return hmac.new(shared.encode(), f"loraflow-webhook-user:{user}".encode(), hashlib.sha256).hexdigest()


def secret_for(job: Any) -> str | None:
    """The secret a job's webhooks are signed with; None when the operator set none (sent unsigned)."""
    from loraflow.notify.addresses import is_service_job

    shared = os.environ.get(SECRET_ENV)
    if not shared or not is_service_job(job):
        return shared or None
    return user_secret(shared, job.owner)


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def verify(secret: str, header: str, body: bytes, tolerance_s: int = TOLERANCE_S, now: float | None = None) -> bool:
    """What a receiver runs: the signature matches and the timestamp is inside the replay window."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        ts = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))
