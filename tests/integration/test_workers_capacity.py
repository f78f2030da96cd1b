"""Workers under load and faults: a failing tick never kills a worker thread, service jobs wait in the
queue for the workers (the door starts nothing), and a machine trains at most its capacity at once with
exactly one launch per attempt and true queue positions."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost
from loraflow.jobs.models import JobRow
from loraflow.jobs.queue import snapshot
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.running.submit import ServiceConfig, submit
from loraflow.running.worker import Worker
from loraflow.spec import load_spec
from tests.integration.test_local_jobs import wait_for, write_spec


def _worker_of(store: Store, job_id: str) -> str | None:
    with store.reader() as s:
        return s.get(JobRow, job_id).worker


def _trainings(store: Store, job_ids: list[str]) -> list[tuple[datetime, datetime]]:
    """Each job's time on this machine: from its first stage to its end."""
    spans = []
    for job_id in job_ids:
        events = store.events(job_id)
        start = next(e.ts for e in events if e.type == "stage.started")
        end = next(e.ts for e in events if e.type == "job.state" and e.data.get("to") == "completed")
        spans.append((start, end))
    return spans


def _most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])  # an end before a start at a tie
    most = now = 0
    for _, delta in edges:
        now += delta
        most = max(most, now)
    return most


@pytest.mark.timeout(600)
def test_a_failing_tick_does_not_kill_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """The store failing in the heartbeat (as a locked or restarting database does) is logged and retried;
    the worker goes on to claim and run the next job (before: its thread died and the job waited forever)."""
    store = Store()
    spec = load_spec(write_spec(tmp_path, steps=4))
    first = store.create_job(spec)
    worker = Worker(store, slots=1, capacity=1, follow=False)
    failures = {"left": 0}
    beat = worker.heartbeat

    def flaky() -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))
        beat()

    monkeypatch.setattr(worker, "heartbeat", flaky)
    caplog.set_level(logging.ERROR, logger="loraflow.running.worker")
    worker.start(poll_s=0.2)
    try:
        wait_for(lambda: _worker_of(store, first.id) == worker.id, what="the first claim")
        failures["left"] = 2
        second = store.create_job(spec)
        wait_for(lambda: failures["left"] == 0, what="the store errors to happen")
        wait_for(lambda: store.get(second.id).state not in ACTIVE, timeout=240, what="the second job to run")
        assert worker._thread is not None and worker._thread.is_alive()
    finally:
        worker.stop()
    assert store.get(second.id).state is JobState.COMPLETED, store.get(second.id).error
    assert "tick failed" in caplog.text and "database is locked" in caplog.text


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_service_jobs_wait_for_the_workers_and_run_at_most_capacity(tmp_path: Path) -> None:
    """20 jobs through the service's door with workers: the door starts none (before: it started a runner
    for each, 20 trainings at once); the queue numbers them 1..20; two workers' slots on a machine with a
    capacity of 2 train at most 2 at once; all 20 complete, each with exactly one launch."""
    store = Store()
    spec = load_spec(write_spec(tmp_path, steps=2))
    config = ServiceConfig(max_concurrent_jobs=100, queue_for_workers=True)
    ids = [submit(store, spec, owner="ann", config=config).id for _ in range(20)]
    runners = [LocalHost().pid(Handle.in_folder(JobLayout(str(store.get(i).folder)).run, "runner")) for i in ids]
    assert runners == [None] * 20, "the door started runners itself"
    places = snapshot(store, slots=2)
    assert [places[i].position for i in ids] == list(range(1, 21))
    worker = Worker(store, slots=4, capacity=2, follow=False).start(poll_s=0.2)
    try:
        wait_for(lambda: sum(_worker_of(store, i) is not None for i in ids) >= 2, what="the first claims")
        places = snapshot(store, slots=2)
        waiting = [places[i].position for i in ids if i in places]
        assert waiting == list(range(1, len(waiting) + 1)) and len(waiting) >= 18 - 2
        wait_for(lambda: all(store.get(i).state not in ACTIVE for i in ids), timeout=1700, what="all 20 jobs")
    finally:
        worker.stop()
    for job_id in ids:
        job = store.get(job_id)
        assert job.state is JobState.COMPLETED, job.error
        assert len(store.events(job_id, types=["train.launched"])) == 1
    assert _most_at_once(_trainings(store, ids)) <= 2
