"""The durable webhook outbox: every notification for every receiver is a row in the store until it is
delivered or given up, so a runner, worker or server that dies or restarts loses none.

- `enqueue` turns a job's new events into rows (one per receiver that wants it), under the job's row lock
  and from a cursor in the store, so any number of processes may call it and each event is queued once.
  Progress is picked at most every `progress_every_s` seconds of the events' own time (reproducible).
- `due` lists each (job, receiver)'s oldest undelivered row: receivers get a job's events in order, and a
  receiver that is down holds back only its own queue.
- `claim` takes one row for one attempt (`claimed_until`): a slow receiver gets one attempt at a time,
  however many deliverers run (the runner's and a worker's), never copies racing each other.
- `settle` records the attempt: delivered, retried after a backoff, or given up (a final 4xx, a refused
  address, or `give_up_h` hours of failures). Each final outcome is also a `webhook.delivery` event.

The bound: attempts back off from `retry_s` doubling up to `max_delay_s` (15 min), and a row is given up
`give_up_h` hours (24) after it was queued; all three and the attempt timeout are set by the environment
(LORAFLOW_WEBHOOK_RETRY_S, LORAFLOW_WEBHOOK_MAX_DELAY_S, LORAFLOW_WEBHOOK_GIVE_UP_H,
LORAFLOW_WEBHOOK_TIMEOUT_S).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import and_, or_, select, update

from loraflow.jobs.models import EventRow, JobRow, OutboxCursorRow, OutboxRow
from loraflow.jobs.store import Event, Store
from loraflow.notify.formats import payload, webhook_name
from loraflow.spec import NotificationTarget


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class Policy:
    """How hard the outbox tries (see the module's docstring for the environment names)."""

    retry_s: float = 10.0
    max_delay_s: float = 900.0
    give_up_h: float = 24.0
    timeout_s: float = 60.0
    progress_every_s: float = 30.0

    @classmethod
    def from_env(cls, **overrides: Any) -> Policy:
        values = {
            "retry_s": _env_float("LORAFLOW_WEBHOOK_RETRY_S", 10.0),
            "max_delay_s": _env_float("LORAFLOW_WEBHOOK_MAX_DELAY_S", 900.0),
            "give_up_h": _env_float("LORAFLOW_WEBHOOK_GIVE_UP_H", 24.0),
            "timeout_s": _env_float("LORAFLOW_WEBHOOK_TIMEOUT_S", 60.0),
        }
        return cls(**{**values, **overrides})

    def delay(self, attempts: int) -> float:
        return min(self.max_delay_s, self.retry_s * 2 ** max(0, attempts - 1))


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def enqueue(
    store: Store, job_id: str, targets: list[NotificationTarget], policy: Policy, after_seq: int = 0
) -> int:
    """Queue the notifications among the job's events after its cursor; returns how many rows were added.
    `after_seq`: where a job with no cursor yet starts (events before it were told another way)."""
    from loraflow.notify.webhooks import wants

    added = 0
    with store.session() as s, s.begin():
        s.execute(select(JobRow.id).where(JobRow.id == job_id).with_for_update())  # one scanner per job
        job = store.get(job_id)  # read under the lock: the job as of the last event read below
        cursor = s.get(OutboxCursorRow, job_id)
        if cursor is None:
            cursor = OutboxCursorRow(job_id=job_id, seq=after_seq, progress_at=None)
            s.add(cursor)
        rows = s.execute(
            select(EventRow).where(EventRow.job_id == job_id, EventRow.seq > cursor.seq).order_by(EventRow.seq)
        ).scalars()
        for row in rows:
            cursor.seq = row.seq
            event = Event(row.job_id, row.seq, _aware(row.ts) or datetime.now(UTC), row.type, row.stage, row.data)
            name = webhook_name(event)
            if name is None:
                continue
            if name == "job.progress":
                last = _aware(cursor.progress_at)
                if last is not None and (event.ts - last).total_seconds() < policy.progress_every_s:
                    continue
                cursor.progress_at = event.ts
            body = payload(name, event, job)
            for index, target in enumerate(targets):
                if wants(target, name):
                    s.add(OutboxRow(job_id=job_id, target=index, seq=event.seq, event=name, payload=body))
                    added += 1
    return added


def due(store: Store, job_id: str | None = None, now: datetime | None = None) -> list[OutboxRow]:
    """Each (job, receiver)'s oldest undelivered row, when its time has come and nobody is trying it."""
    now = now or datetime.now(UTC)
    query = select(OutboxRow).where(OutboxRow.state == "pending").order_by(
        OutboxRow.job_id, OutboxRow.target, OutboxRow.seq
    )
    if job_id is not None:
        query = query.where(OutboxRow.job_id == job_id)
    heads: dict[tuple[str, int], OutboxRow] = {}
    with store.reader() as s:
        for row in s.execute(query).scalars():
            heads.setdefault((row.job_id, row.target), row)
    return [
        row
        for row in heads.values()
        if (_aware(row.next_at) or now) <= now and ((_aware(row.claimed_until) or now) <= now)
    ]


def claim(store: Store, row_id: int, policy: Policy) -> bool:
    """Take the row for one attempt; False when another deliverer has it now."""
    now = datetime.now(UTC)
    with store.session() as s, s.begin():
        taken = s.execute(
            update(OutboxRow)
            .where(
                OutboxRow.id == row_id,
                OutboxRow.state == "pending",
                or_(OutboxRow.claimed_until.is_(None), OutboxRow.claimed_until <= now),
            )
            .values(claimed_until=now + timedelta(seconds=policy.timeout_s * 2 + 30))
        )
    return taken.rowcount == 1


def release(store: Store, row_id: int) -> None:
    """An attempt cut short (the deliverer is stopping): the row is free for the next one at once."""
    with store.session() as s, s.begin():
        s.execute(update(OutboxRow).where(OutboxRow.id == row_id).values(claimed_until=None))


def settle(
    store: Store, row: OutboxRow, target: NotificationTarget, ok: bool, final: bool, status: int | None,
    error: str | None, policy: Policy,
) -> str:
    """Record one attempt; returns the row's new state."""
    now = datetime.now(UTC)
    attempts = row.attempts + 1
    created = _aware(row.created_at) or now
    gave_up = not ok and (final or now - created > timedelta(hours=policy.give_up_h))
    state = "delivered" if ok else "failed" if gave_up else "pending"
    values: dict[str, Any] = {"attempts": attempts, "status": status, "error": error, "claimed_until": None}
    if state == "pending":
        values["next_at"] = now + timedelta(seconds=policy.delay(attempts))
    else:
        values |= {"state": state, "done_at": now}
    with store.session() as s, s.begin():
        s.execute(update(OutboxRow).where(OutboxRow.id == row.id).values(**values))
    if state != "pending":
        from loraflow.notify.webhooks import target_url

        url = target_url(target) or ""
        store.append_event(
            row.job_id,
            "webhook.delivery",
            {
                "event": row.event,
                "seq": row.seq,
                "target": target.type,
                "receiver": row.target,
                "host": httpx.URL(url).host if url else None,
                "ok": ok,
                "attempts": attempts,
                "status": status,
                "error": error,
            },
        )
    return state


def summary(store: Store, job_id: str, targets: list[NotificationTarget]) -> list[dict[str, Any]]:
    """Delivery state per receiver, for `jobs show` and the API: counts, the last outcome, the next try.
    Never the URL (it may carry a token): its type and host only."""
    with store.reader() as s:
        rows = s.execute(select(OutboxRow).where(OutboxRow.job_id == job_id).order_by(OutboxRow.seq)).scalars().all()
    out = []
    for index, target in enumerate(targets):
        mine = [r for r in rows if r.target == index]
        pending = [r for r in mine if r.state == "pending"]
        tried = [r for r in mine if r.attempts]
        last = max(tried, key=lambda r: r.id, default=None)
        url = target.url or ""  # never read a URL kept in the environment into a record
        out.append(
            {
                "receiver": index,
                "type": target.type,
                "host": httpx.URL(url).host if url else None,
                "delivered": sum(r.state == "delivered" for r in mine),
                "pending": len(pending),
                "failed": sum(r.state == "failed" for r in mine),
                "next_event": pending[0].event if pending else None,
                "next_attempt_at": _aware(pending[0].next_at).isoformat() if pending else None,  # type: ignore[union-attr]
                "last_error": last.error if last is not None else None,
            }
        )
    return out


def jobs_to_scan(store: Store, limit: int = 500) -> list[str]:
    """Jobs with events the outbox has not looked at yet (a worker's dispatcher covers every job)."""
    with store.reader() as s:
        query = (
            select(JobRow.id)
            .outerjoin(OutboxCursorRow, OutboxCursorRow.job_id == JobRow.id)
            .where(or_(OutboxCursorRow.seq.is_(None), and_(OutboxCursorRow.seq < JobRow.last_seq)))
            .limit(limit)
        )
        return list(s.execute(query).scalars().all())
