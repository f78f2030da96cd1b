"""Jobs whose runner is gone without anyone being told (a SIGKILL, the OOM killer, a reboot) are picked up
again without a user command: a worker restarts the runners of its own jobs on every tick, and for a job
started from the CLI (no worker) `loraflow jobs list` does it. The new runner re-attaches to a trainer
that is still running (it never launches a second one) or resumes from the last checkpoint.

A job is an orphan when no worker holds it, its runner's lock is free on this machine (the runner is
gone), nobody follows it, and its heartbeat is stale (so a job run from another machine sharing the
database is left alone while its runner there is alive).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update

from loraflow import paths
from loraflow.jobs.models import JobRow
from loraflow.jobs.outputs import JobOutputs
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout, handoff_file

STALE_S = 30.0  # the runner stamps its heartbeat every 5 s while it follows training
# A pending job has no runner yet by design (a worker's queue, or `train` about to start one).
RUNNING = [s.value for s in ACTIVE if s is not JobState.PENDING]


def orphans(store: Store, stale_s: float = STALE_S) -> list[str]:
    from loraflow.running.control import runner_alive

    now = datetime.now(UTC)
    with store.reader() as s:
        rows = s.execute(
            select(JobRow.id, JobRow.heartbeat_at, JobRow.artifacts).where(
                JobRow.state.in_(RUNNING), JobRow.worker.is_(None)
            )
        ).all()
    found = []
    for job_id, beat, artifacts in rows:
        if JobOutputs.load(artifacts).check == "pending":
            continue
        if beat is not None and (now - (beat if beat.tzinfo else beat.replace(tzinfo=UTC))).total_seconds() < stale_s:
            continue
        folder = paths.job_dir(job_id)
        if not (folder / "run").is_dir() or handoff_file(JobLayout(str(folder))).exists() or runner_alive(job_id):
            continue
        found.append(job_id)
    return found


def adopt_orphans(store: Store, stale_s: float = STALE_S) -> list[str]:
    """Start a runner for every orphan; returns their ids."""
    from loraflow.running.control import start_runner

    adopted = orphans(store, stale_s)
    for job_id in adopted:
        store.append_event(job_id, "runner.adopted", {"reason": "its runner was gone and its heartbeat stale"})
        start_runner(job_id)
    return adopted


def runner_left(store: Store, job_id: str) -> None:
    """A runner that leaves on a signal clears its heartbeat, so its job is an orphan at once rather than
    after STALE_S (a worker's job keeps the worker's stamp: that worker restarts the runner itself)."""
    with store.session() as s, s.begin():
        s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.worker.is_(None)).values(heartbeat_at=None))
