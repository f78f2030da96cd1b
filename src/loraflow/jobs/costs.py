"""What a job's rented time cost: closed leases plus the running one, each at its real hourly price.

The runner, the follower (budget cap) and the credit ledger all charge from these three functions, so a
user is billed what the budget stop saw."""

from __future__ import annotations

import time
from typing import Any


def lease_seconds(lease: dict[str, Any], now: float | None = None) -> float:
    start = float(lease.get("started_at") or 0)
    end = lease.get("ended_at") or now or time.time()
    return max(0.0, float(end) - start) if start else 0.0


def lease_cost(lease: dict[str, Any], now: float | None = None) -> float:
    return float(lease.get("price_usd_h") or 0) * lease_seconds(lease, now) / 3600


def job_cost(leases: list[dict[str, Any]], lease: dict[str, Any] | None, now: float | None = None) -> float:
    """Closed leases (`JobOutputs.leases`) plus the running one, from their real hourly prices."""
    past = sum(lease_cost(item) for item in leases)
    return past + (lease_cost(lease, now) if lease and lease.get("started_at") else 0.0)
