"""Credits: an append-only ledger with balances derived from it.

    available = deposits + releases + refunds + adjustments - holds
    held      = holds - charges - releases          (per job, and in total)

A job's quote (its estimate plus the platform fee, in points) is held when it is submitted; when it
ends, the real cost (lease seconds x price, plus the fee) is charged from the hold and the rest is
released. Jobs that failed for the platform's reasons (a host lost, an internal error) are charged
nothing. Every entry names its job, and a charge carries the leases it was computed from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from loraflow.errors import UserInputError
from loraflow.jobs.costs import job_cost, lease_seconds
from loraflow.jobs.platform_tables import AccountRow, LedgerRow
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Job, Store
from loraflow.platform.config import PlatformConfig
from loraflow.spec import TrainSpec

KINDS = ("deposit", "hold", "charge", "release", "refund", "adjustment")
PLATFORM_FAULTS = {"host_lost", "release_failed", "internal", "failed_upstream"}


class InsufficientCredits(UserInputError):
    def __init__(self, needed: int, available: int) -> None:
        super().__init__(
            f"the job needs {needed} points and {available} are available",
            fix="add credits, lower budget.max_usd or training.steps",
        )
        self.needed, self.available = needed, available


@dataclass(frozen=True)
class Balance:
    available: int
    held: int
    spent: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Quote:
    estimate_usd: float
    fee_usd: float
    total_usd: float
    points: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_points(usd: float, cfg: PlatformConfig) -> int:
    return math.ceil(round(usd * cfg.points_per_usd, 6))


def with_fee(usd: float, cfg: PlatformConfig) -> float:
    return usd * (1 + cfg.fee_percent / 100) + cfg.fee_fixed_usd


def quote(spec: TrainSpec, cfg: PlatformConfig) -> Quote:
    """The estimate for the job's provider, or its budget cap when that is higher (the most it may cost)."""
    from loraflow.providers.estimate import estimate
    from loraflow.providers.registry import is_rented

    if spec.engine.name == "fal":  # a hosted trainer's price per run
        from loraflow.engines.fal import price_usd

        est = price_usd(spec)
    elif is_rented(spec.compute.provider):
        from loraflow.engines import engine_needs
        from loraflow.providers.registry import provider_for

        est = provider_for(spec.compute.provider, needs=engine_needs).offers(spec)[0].estimate.cost_usd
    else:
        gpu = "CPU" if spec.base_model == "tiny-flux" else "RTX 4090"
        e = estimate(spec, gpu, cfg.local_usd_per_hour, remote=False)
        est = e.cost_usd
    est = max(est, spec.budget.max_usd or 0.0)
    total = with_fee(est, cfg)
    return Quote(round(est, 6), round(total - est, 6), round(total, 6), to_points(total, cfg))


def _sums(s: Any, user: str, job_id: str | None = None) -> dict[str, int]:
    query = select(LedgerRow.kind, func.coalesce(func.sum(LedgerRow.points), 0)).where(LedgerRow.user == user)
    if job_id is not None:
        query = query.where(LedgerRow.job_id == job_id)
    totals = dict.fromkeys(KINDS, 0)
    for kind, points in s.execute(query.group_by(LedgerRow.kind)).all():
        totals[kind] = int(points)
    return totals


def _balance(t: dict[str, int]) -> Balance:
    available = t["deposit"] + t["release"] + t["refund"] + t["adjustment"] - t["hold"]
    return Balance(available, t["hold"] - t["charge"] - t["release"], t["charge"] - t["refund"])


def balance(store: Store, user: str) -> Balance:
    with store.reader() as s:
        return _balance(_sums(s, user))


def _lock_account(s: Any, user: str) -> None:
    """Row lock on the user's account (PostgreSQL); SQLite's BEGIN IMMEDIATE already serialises writers."""
    if s.get(AccountRow, user) is None:
        s.add(AccountRow(user=user))
        s.flush()
    s.execute(select(AccountRow).where(AccountRow.user == user).with_for_update())


def add_entry(
    store: Store,
    user: str,
    kind: str,
    points: int,
    by: str,
    note: str = "",
    job_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> Balance:
    if kind not in ("deposit", "adjustment"):
        raise UserInputError(f"{kind} entries are made by jobs, not by hand")
    if kind == "deposit" and points <= 0:
        raise UserInputError("a deposit must be more than 0 points")
    with store.session() as s, s.begin():
        _lock_account(s, user)
        if kind == "adjustment" and _balance(_sums(s, user)).available + points < 0:
            raise UserInputError("that adjustment would make the balance negative")
        s.add(LedgerRow(user=user, kind=kind, points=points, by=by, note=note, job_id=job_id, detail=detail or {}))
    return balance(store, user)


def refund(store: Store, user: str, job_id: str, points: int, by: str, note: str) -> Balance:
    """Give back (part of) what a job was charged, e.g. after a support ticket; never more than charged."""
    if points <= 0:
        raise UserInputError("a refund must be more than 0 points")
    with store.session() as s, s.begin():
        _lock_account(s, user)
        t = _sums(s, user, job_id)
        refundable = t["charge"] - t["refund"]
        if points > refundable:
            raise UserInputError(f"job {job_id} has {refundable} refundable points, not {points}")
        s.add(LedgerRow(user=user, kind="refund", points=points, job_id=job_id, by=by, note=note))
    return balance(store, user)


def hold(store: Store, user: str, job_id: str, points: int) -> Balance:
    """Reserve a job's quote; refuses (and writes nothing) when the balance cannot cover it."""
    with store.session() as s, s.begin():
        _lock_account(s, user)
        available = _balance(_sums(s, user)).available
        if points > available:
            raise InsufficientCredits(points, available)
        s.add(LedgerRow(user=user, kind="hold", points=points, job_id=job_id, note="quote held at submission"))
    return balance(store, user)


def real_cost_usd(store: Store, job: Job, cfg: PlatformConfig) -> tuple[float, dict[str, Any]]:
    """Leases at their real prices; local work at the platform's own hourly rate; a hosted run at the price
    its engine recorded (no GPU of the platform's was used)."""
    if job.train_spec.engine.name == "fal":
        return job.cost_usd, {"leases": [], "local_seconds": 0.0, "hosted": {"engine": "fal", "usd": job.cost_usd}}
    usd = job_cost(job.outputs.leases, None)
    leases = [
        {k: lease.get(k) for k in ("provider", "instance_id", "gpu", "price_usd_h", "started_at", "ended_at")}
        | {"seconds": round(lease_seconds(lease), 3)}
        for lease in job.outputs.leases
    ]
    local_s = 0.0
    if job.train_spec.compute.provider == "local":
        launched = store.events(job.id, types=["train.launched"], limit=1)
        last = store.events(job.id, types=["job.state"], latest=True)  # when it ended, whatever came after
        if launched and last:
            local_s = max(0.0, (last[0].ts - launched[0].ts).total_seconds())
        usd += cfg.local_usd_per_hour * local_s / 3600
    return usd, {"leases": leases, "local_seconds": round(local_s, 3)}


def settle(store: Store, job: Job, cfg: PlatformConfig) -> dict[str, Any] | None:
    """Charge what an ended job really cost (from its hold) and release the rest; once per job."""
    if job.state in ACTIVE or job.state is JobState.AWAITING_APPROVAL:
        return None
    usd, detail = real_cost_usd(store, job, cfg)  # read before the write lock is taken
    code = _error_code(store, job)
    with store.session() as s, s.begin():
        _lock_account(s, job.owner)
        t = _sums(s, job.owner, job.id)
        held = t["hold"] - t["charge"] - t["release"]
        if t["hold"] == 0 or held <= 0:
            return None
        platform_fault = job.state is JobState.FAILED and code in PLATFORM_FAULTS
        total_usd = 0.0 if platform_fault else with_fee(usd, cfg)
        # A resumed job holds again and settles again: charge only what the job cost since the last charge.
        points = max(0, min(to_points(total_usd, cfg) - t["charge"], held))
        detail |= {
            "cost_usd": round(usd, 6),
            "total_usd": round(total_usd, 6),
            "state": job.state.value,
            "error_code": code,
            "platform_fault": platform_fault,
        }
        if points:
            s.add(
                LedgerRow(
                    user=job.owner,
                    kind="charge",
                    points=points,
                    job_id=job.id,
                    detail=detail,
                    note=f"job {job.state.value}: real cost plus fee",
                )
            )
        if held - points:
            why = "platform fault: not charged" if platform_fault else "unused part of the hold"
            s.add(LedgerRow(user=job.owner, kind="release", points=held - points, job_id=job.id, note=why))
    store.append_event(job.id, "credits.settled", {"charged": points, "released": held - points, **detail})
    return {"charged": points, "released": held - points, **detail}


def _error_code(store: Store, job: Job) -> str | None:
    errors = store.events(job.id, types=["error"], latest=True)
    return errors[0].data.get("code") if errors else None


def entries(store: Store, user: str, limit: int = 200) -> list[dict[str, Any]]:
    with store.reader() as s:
        rows = s.execute(
            select(LedgerRow).where(LedgerRow.user == user).order_by(LedgerRow.id.desc()).limit(limit)
        ).scalars()
        return [
            {
                "id": r.id,
                "kind": r.kind,
                "points": r.points,
                "job_id": r.job_id,
                "note": r.note,
                "by": r.by,
                "detail": r.detail,
                "at": r.created_at.isoformat() if isinstance(r.created_at, datetime) else None,
            }
            for r in rows
        ]
