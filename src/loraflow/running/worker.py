"""Job workers: claim pending jobs from the store and run them, several workers on one database.

A claim is one transaction that picks unclaimed pending jobs, or active jobs whose worker stopped
heart-beating, with `FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite serialises writers instead), and
stamps them with this worker's id and the time. The worker keeps stamping the jobs it runs; a job
whose stamp goes stale belongs to a dead worker and the next claim takes it over. The job itself
runs in its runner process, which re-attaches to a training process that is still running, so a
takeover never trains twice.

Remote trainers, once launched, are followed by the worker's one Follower (running/follower.py: one event
loop for all of them) instead of a process each; a job handed off by a worker that died is adopted by
whichever worker takes it over.

    loraflow worker --slots 4
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import and_, or_, select, update

from loraflow.jobs.models import JobRow
from loraflow.jobs.outputs import JobOutputs
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Job, Store

if TYPE_CHECKING:
    from loraflow.notify.notifier import Dispatcher
    from loraflow.running.follower import Follower


log = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0  # a failing tick is retried at most this far apart
CANDIDATES = 200  # pending jobs looked at per claim: remote ones behind local ones that must wait


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def gpu_capacity() -> int:
    """How many local trainings this machine runs at once: LORAFLOW_GPU_SLOTS, else its GPUs, else 1 (CPU)."""
    configured = os.environ.get("LORAFLOW_GPU_SLOTS", "").strip()
    if configured:
        try:
            return max(1, int(configured))
        except ValueError:
            log.warning("LORAFLOW_GPU_SLOTS=%r is not a whole number: counting GPUs instead", configured)
    from loraflow.nvidia_smi import gpu_stats

    return max(1, len(gpu_stats() or []))


def _gpus_here(spec: dict[str, object]) -> int:
    """The GPUs the job trains on on this machine: its `compute.gpus` (0 when a rented or hosted GPU does)."""
    from loraflow.running.remote import REMOTE_PROVIDERS

    compute = spec.get("compute") if isinstance(spec, dict) else None
    engine = spec.get("engine") if isinstance(spec, dict) else None
    provider = compute.get("provider", "local") if isinstance(compute, dict) else "local"
    name = engine.get("name") if isinstance(engine, dict) else None
    if provider in REMOTE_PROVIDERS or name in HOSTED:
        return 0
    gpus = compute.get("gpus", 1) if isinstance(compute, dict) else 1
    return max(1, int(gpus)) if isinstance(gpus, int) else 1


HOSTED = {"fal"}  # engines that train on the service's own GPUs


class Worker:
    def __init__(
        self,
        store: Store,
        slots: int = 4,
        lease_s: float = 30.0,
        name: str | None = None,
        follow: bool = True,
        capacity: int | None = None,
    ) -> None:
        self.store = store
        self.slots = slots
        self.capacity = capacity if capacity is not None else gpu_capacity()
        self.failures = 0  # ticks failed in a row (backoff)
        self.lease_s = lease_s
        self.id = name or worker_id()
        self._stop = threading.Event()
        self.follow = follow
        self.follower: Follower | None = None
        self.dispatcher: Dispatcher | None = None  # every job's webhook outbox (notify/notifier.py)
        self._thread: threading.Thread | None = None
        self._queue_seen: dict[str, tuple[object, ...]] = {}  # waiting jobs' last announced places

    def claim(self, limit: int) -> list[str]:
        """Take up to `limit` jobs nobody is working on, oldest first; a job that trains here only while
        this machine has capacity left (the others wait their turn); returns their ids."""
        if limit <= 0:
            return []
        now = datetime.now(UTC)
        stale = now - timedelta(seconds=self.lease_s)
        active = [s.value for s in ACTIVE]
        with self.store.session() as s, s.begin():
            host = self.id.split(":", 1)[0] + ":"
            room = self.capacity - self._local_busy(s, host)
            query = (
                select(JobRow.id, JobRow.spec, JobRow.artifacts, JobRow.worker)
                .where(
                    or_(
                        and_(JobRow.state == JobState.PENDING.value, JobRow.worker.is_(None)),
                        and_(
                            JobRow.state.in_(active),
                            JobRow.worker.is_not(None),
                            JobRow.worker != self.id,
                            or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < stale),
                        ),
                    )
                )
                .order_by(JobRow.created_at, JobRow.id)
                .limit(CANDIDATES)
                .with_for_update(skip_locked=True)
            )
            ids: list[str] = []
            for job_id, spec, artifacts, owner in s.execute(query).all():
                if len(ids) >= limit:
                    break
                if JobOutputs.load(artifacts).check == "pending":
                    continue  # waits for the operator's check, not for a slot
                need = _gpus_here(spec)
                if need and not (owner or "").startswith(host):  # a dead local worker's job is counted already
                    if need > room and not (room == self.capacity and need > self.capacity):
                        continue  # waits for room (one asking more than the machine has runs alone)
                    room -= need
                ids.append(job_id)
            if ids:
                s.execute(update(JobRow).where(JobRow.id.in_(ids)).values(worker=self.id, heartbeat_at=now))
        return ids

    @staticmethod
    def _local_busy(s: object, host: str) -> int:
        """Active jobs training on this machine, held by any worker on this host."""
        query = select(JobRow.spec).where(
            JobRow.worker.startswith(host), JobRow.state.in_([x.value for x in ACTIVE])
        )
        return sum(_gpus_here(spec) for spec in s.execute(query).scalars().all())  # type: ignore[attr-defined]

    def mine(self) -> list[str]:
        with self.store.reader() as s:
            query = select(JobRow.id).where(JobRow.worker == self.id, JobRow.state.in_([x.value for x in ACTIVE]))
            return list(s.execute(query).scalars().all())

    def heartbeat(self) -> None:
        with self.store.session() as s, s.begin():
            s.execute(
                update(JobRow)
                .where(JobRow.worker == self.id, JobRow.state.in_([x.value for x in ACTIVE]))
                .values(heartbeat_at=datetime.now(UTC))
            )

    def tick(self) -> list[str]:
        """One round: keep our jobs alive, take new ones up to our slots, start their runners."""
        self.heartbeat()
        running = self.store.jobs_by_id(self.mine())
        # A slot is a job being prepared, launched, trained here or decided on; a remote trainer the
        # follower follows takes none, so a worker with a few slots can follow hundreds of rented GPUs.
        busy = sum(not self._keep(job) for job in running.values())
        claimed = self.claim(self.slots - busy)
        for job in self.store.jobs_by_id(claimed).values():
            self.store.append_event(job.id, "worker.claimed", {"worker": self.id})
            self._keep(job)
        self._announce()
        # A job started from the CLI on this machine whose runner died: start it again (running/orphans.py).
        from loraflow.running.orphans import adopt_orphans

        adopt_orphans(self.store)
        return claimed

    def _announce(self) -> None:
        """Tell waiting jobs their new place in the queue (`job.queued`, only when it changed)."""
        from loraflow.jobs.queue import announce

        try:
            announce(self.store, self.slots, self._queue_seen)
        except Exception as exc:  # the queue's news must never stop the worker from working
            print(f"queue announce failed: {exc!r}")

    def _keep(self, job: Job) -> bool:
        """Make sure the job is being worked on: by the follower (True), or by its runner, started again
        when it died or this worker took the job over. A job held for the external check waits."""
        from loraflow.running.control import runner_alive, start_runner

        follower = self.follower
        if job.outputs.check == "pending":
            return False
        if follower is not None and follower.following(job.id):
            return True
        if runner_alive(job.id):
            return False
        if follower is not None and follower.adopt(job.id):  # handed off by its runner
            return True
        start_runner(job.id, handoff=follower is not None)
        return False

    def run(self, poll_s: float = 1.0) -> None:
        """Tick until stopped. A failing tick is logged and retried with backoff (up to MAX_BACKOFF_S):
        the store may be locked or restarting; the jobs' trainers go on meanwhile."""
        while not self._stop.is_set():
            try:
                self.tick()
                if self.failures:
                    log.warning("worker %s: ticking again after %d failed tick(s)", self.id, self.failures)
                self.failures = 0
                wait = poll_s
            except Exception:
                self.failures += 1
                wait = min(MAX_BACKOFF_S, poll_s * 2 ** min(self.failures, 10))
                log.exception("worker %s: tick failed (%d in a row); retrying in %.1fs", self.id, self.failures, wait)
            self._stop.wait(wait)

    def start(self, poll_s: float = 1.0) -> Worker:
        from loraflow.notify.notifier import Dispatcher

        self.dispatcher = Dispatcher(self.store, poll_s=max(poll_s, 0.5)).start()
        if self.follow:
            try:
                from loraflow.running.follower import Follower

                self.follower = Follower(self.store).start()
            except ImportError:  # asyncssh is in the `cloud` extra: without it each runner follows its job
                self.follower = None
        self._thread = threading.Thread(target=self.run, args=(poll_s,), daemon=True, name=f"worker-{self.id}")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop claiming; followed jobs go back to runner processes of their own and keep training."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self.follower is not None:
            self.follower.close()
        if self.dispatcher is not None:  # what it could not deliver stays in the outbox for the next one
            self.dispatcher.stop(flush_timeout_s=5)
