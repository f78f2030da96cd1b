"""Where a waiting job stands: its place among waiting jobs (overall and for its owner) and an ETA.

A job waits for a worker slot (pending), for the operator's external check (pending, `check`), or
for a GPU offer (provisioning without a lease yet). The queue is the order the workers claim jobs
in (running/worker.py: oldest `created_at` first, ties by id), so position 1 is taken next. Jobs
awaiting a person's approval after training form a queue of their own (oldest first, no ETA).

The ETA is when the job is expected to get a slot, from the jobs ahead of it: every slot-holding job
frees its slot after its remaining steps at its measured rate (its latest `progress` event), or
after the catalog's throughput estimate (jobs/estimate.py) when it has not trained yet; each waiting
job then takes the first slot to free, in queue order, for its own estimated time. A job waiting for
a GPU offer already holds a slot: its ETA is what is left of its set-up estimate. The numbers are
computed from the store on demand (CLI, API, web page), and a worker appends `job.queued` only when
a job's place changes, so the event log says how the queue moved without a line per second.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from loraflow.jobs.models import EventRow, JobRow
from loraflow.jobs.outputs import JobOutputs
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Job, Store
from loraflow.layout import JobLayout
from loraflow.providers.estimate import Estimate, estimate

QUEUED = "job.queued"
DEFAULT_SLOTS = 2  # `loraflow serve`'s default --workers


@dataclass(frozen=True)
class QueueEntry:
    position: int  # 1 = taken next, among every waiting job
    position_for_user: int  # among the same owner's waiting jobs
    waiting: int  # how many jobs wait in all
    waiting_for: str  # slot | check | gpu | approval
    eta_s: float | None  # seconds until it is expected to be taken up (None: unknown)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def what(self) -> str:
        """What it waits for, in words (the web page)."""
        words = {"slot": "a worker slot", "check": "the external check", "gpu": "a GPU offer"}
        return words.get(self.waiting_for, self.waiting_for)

    def line(self) -> str:
        """A short human form: `#2 (yours #1) ~4m`."""
        eta = "" if self.eta_s is None else f" ~{human_seconds(self.eta_s)}"
        mine = f" (yours #{self.position_for_user})" if self.position_for_user != self.position else ""
        what = "" if self.waiting_for == "slot" else f" {self.waiting_for}"
        return f"#{self.position}{mine}{what}{eta}"


def human_seconds(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def slots_default() -> int:
    """The slot count for readers outside a worker (CLI, API): LORAFLOW_QUEUE_SLOTS, else serve's default."""
    try:
        return max(1, int(os.environ.get("LORAFLOW_QUEUE_SLOTS", DEFAULT_SLOTS)))
    except ValueError:
        return DEFAULT_SLOTS


def waiting_for(job: Job, claimed: bool = False) -> str | None:
    """What the job waits for, or None when it is not waiting. `claimed`: a worker took it (it is
    starting and holds that worker's slot)."""
    return _waiting(job.state.value, job.outputs, job.lease, claimed)


def _waiting(state: str, outputs: JobOutputs, lease: Any, claimed: bool) -> str | None:
    if state == JobState.PENDING.value:
        if outputs.check == "pending":
            return "check"
        return None if claimed else "slot"
    if state == JobState.PROVISIONING.value and not lease:
        return "gpu"
    if state == JobState.AWAITING_APPROVAL.value:
        return "approval"
    return None


def _estimate(job: Job) -> Estimate | None:
    """The catalog estimate for the whole job (None when its spec no longer reads)."""
    try:
        spec = job.train_spec
    except Exception:
        return None
    gpu = (job.lease or {}).get("gpu") or next(iter(spec.compute.gpu.names), None)
    if gpu is None:
        gpu = "CPU" if spec.base_model == "tiny-flux" else "RTX 4090"
    images = job.outputs.images or 20  # no dataset walk per request: a typical set
    return estimate(spec, gpu, 0.0, remote=spec.compute.provider != "local", images=images)


def _since(ts: datetime, now: datetime) -> float:
    return max(0.0, (now - (ts if ts.tzinfo else ts.replace(tzinfo=UTC))).total_seconds())


def _measured_remaining(store: Store, job: Job, now: datetime) -> float | None:
    """Remaining training seconds from the latest progress event: its rate, else its ETA less the time since."""
    last = store.events(job.id, types=["progress"], latest=True)
    if not last:
        return None
    data = last[0].data
    left = max(0, job.total_steps - job.step)
    rate = data.get("rate")
    if isinstance(rate, int | float) and rate > 0:
        return left / rate
    eta = data.get("eta_s")
    if isinstance(eta, int | float):
        return max(0.0, eta - _since(last[0].ts, now))
    return None


def remaining_s(store: Store, job: Job, now: datetime) -> float:
    """Seconds until an active job gives its slot back."""
    if job.state is JobState.FINISHING:
        return 0.0
    est = _estimate(job)
    total = est.total_s if est is not None else 0.0
    if job.state is JobState.TRAINING:
        measured = _measured_remaining(store, job, now)
        if measured is not None:
            return measured + (est.transfer_s + est.check_s if est is not None else 0.0)
        if est is not None and job.total_steps:
            done = min(1.0, job.step / job.total_steps)
            return (est.steps_s + est.samples_s) * (1 - done) + est.transfer_s + est.check_s
        return total
    if job.state is JobState.PROVISIONING and est is not None:
        return max(0.0, total - _since(_entered(store, job), now))
    return total


def _entered(store: Store, job: Job) -> datetime:
    """When the job entered its state (its row's updated_at moves with every event)."""
    last = store.events(job.id, types=["job.state"], latest=True)
    return last[0].ts if last else job.created_at


def _holds_slot(job: Job) -> bool:
    """A worker's slot: every active job but a remote trainer its follower follows (running/worker.py)."""
    if job.state is JobState.TRAINING:
        from loraflow.layout import handoff_file

        return not handoff_file(JobLayout(str(job.folder))).exists()
    return True


def snapshot(store: Store, slots: int | None = None, now: datetime | None = None) -> dict[str, QueueEntry]:
    """Every waiting job's place and ETA, by job id."""
    slots = max(1, slots or slots_default())
    now = now or datetime.now(UTC)
    active = store.list_jobs(states=[s.value for s in ACTIVE], limit=100_000)
    with store.reader() as s:
        query = select(JobRow.id).where(JobRow.state == JobState.PENDING.value, JobRow.worker.is_not(None))
        claimed = set(s.execute(query).scalars().all())
    kinds = {j.id: waiting_for(j, j.id in claimed) for j in active}
    queue = sorted((j for j in active if kinds[j.id]), key=lambda j: (j.created_at, j.id))
    if not queue:
        return _approvals(store)
    holders = [j for j in active if kinds[j.id] in (None, "gpu") and _holds_slot(j)]
    busy = sorted(remaining_s(store, j, now) for j in holders)
    # When slot i frees: with n holders and `slots` slots, the last `slots` of [0]*slots + busy (sorted).
    free = ([0.0] * slots + busy)[-slots:]
    heapq.heapify(free)
    per_user: dict[str, int] = {}
    out: dict[str, QueueEntry] = {}
    for n, job in enumerate(queue, start=1):
        per_user[job.owner] = per_user.get(job.owner, 0) + 1
        kind = kinds[job.id] or "slot"
        if kind == "gpu":  # it has its slot already (counted among the holders): its set-up is what is left
            est = _estimate(job)
            eta: float | None = None if est is None else max(0.0, est.setup_s - _since(_entered(store, job), now))
        else:
            eta = heapq.heappop(free)
            est = _estimate(job)
            heapq.heappush(free, eta + (est.total_s if est is not None else 0.0))
        out[job.id] = QueueEntry(n, per_user[job.owner], len(queue), kind, None if eta is None else round(eta, 1))
    return out | _approvals(store)


def _approvals(store: Store) -> dict[str, QueueEntry]:
    """Jobs awaiting a person's approval, oldest first: a queue of its own, with no ETA (a person decides)."""
    jobs = store.list_jobs(states=[JobState.AWAITING_APPROVAL.value], limit=100_000)
    jobs.sort(key=lambda j: (j.created_at, j.id))
    per_user: dict[str, int] = {}
    out: dict[str, QueueEntry] = {}
    for n, job in enumerate(jobs, start=1):
        per_user[job.owner] = per_user.get(job.owner, 0) + 1
        out[job.id] = QueueEntry(n, per_user[job.owner], len(jobs), "approval", None)
    return out


def entry(store: Store, job: Job, slots: int | None = None) -> QueueEntry | None:
    """One job's place (None when it is not waiting); the API's `queue` field."""
    if waiting_for(job, claimed=False) is None:
        return None
    return snapshot(store, slots).get(job.id)


def announce(store: Store, slots: int | None = None, seen: dict[str, tuple[Any, ...]] | None = None) -> list[str]:
    """Append `job.queued` to each waiting job whose place changed since its last one; returns their ids.

    The comparison and the append are one transaction on the job's row, so several workers announcing
    at once never record the same change twice. `seen` (kept by the caller between rounds) skips that
    write transaction for jobs whose place this caller already knows is unchanged."""
    changed: list[str] = []
    places = snapshot(store, slots)
    if seen is not None:
        for gone in set(seen) - set(places):
            del seen[gone]
    for job_id, e in places.items():
        data = e.to_dict()
        key = (e.position, e.position_for_user, e.waiting_for)
        if seen is not None:
            if seen.get(job_id) == key:
                continue
            seen[job_id] = key
        with store.session() as s, s.begin():
            row = s.execute(select(JobRow).where(JobRow.id == job_id).with_for_update()).scalar_one_or_none()
            if row is None:
                continue
            if _waiting(row.state, JobOutputs.load(row.artifacts), row.lease, row.worker is not None) is None:
                continue
            last = s.execute(
                select(EventRow.data)
                .where(EventRow.job_id == job_id, EventRow.seq > _last_state_seq(s, job_id))
                .where(EventRow.type == QUEUED)
                .order_by(EventRow.seq.desc())
                .limit(1)
            ).scalar_one_or_none()
            if last and (last.get("position"), last.get("position_for_user"), last.get("waiting_for")) == key:
                continue
            Store._append(s, row, QUEUED, data, row.stage)
            changed.append(job_id)
    return changed


def _last_state_seq(s: Any, job_id: str) -> int:
    """The seq of the job's latest state change: a job back in the queue (resumed) announces afresh."""
    seq = s.execute(
        select(EventRow.seq)
        .where(EventRow.job_id == job_id, EventRow.type == "job.state")
        .order_by(EventRow.seq.desc())
        .limit(1)
    ).scalar_one_or_none()
    return int(seq or 0)

