"""Workers claiming jobs: never the same job twice, and a dead worker's jobs taken over."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from loraflow.jobs.models import JobRow
from loraflow.jobs.store import Store
from loraflow.running.worker import Worker
from loraflow.spec import parse_spec

SPEC = parse_spec({"name": "w", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux"})


def claim_race(store_url: str | None, jobs: int = 40, workers: int = 4) -> dict[str, list[str]]:
    store = Store(store_url)
    ids = {store.create_job(SPEC).id for _ in range(jobs)}
    claimed: dict[str, list[str]] = {}
    barrier = threading.Barrier(workers)
    first_round = threading.Barrier(workers)  # every worker claims once before any goes on: the work is shared

    def work(n: int) -> None:
        w = Worker(Store(store_url), slots=1000, name=f"w{n}")
        barrier.wait()
        got: list[str] = []
        # A claim locks a window of candidates (SKIP LOCKED) and takes up to 3 of them, so a round can come back
        # short while another worker holds the window: enough rounds that every job is taken in the end.
        for round_ in range(60):
            got += w.claim(3)
            if round_ == 0:
                first_round.wait()  # without it a busy machine can run one thread through every round first
        claimed[w.id] = got

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [j for got in claimed.values() for j in got]
    assert len(every) == len(set(every)), "a job was claimed twice"
    assert ids <= set(every), "a pending job was left unclaimed"
    return claimed


def test_workers_never_claim_the_same_job_sqlite() -> None:
    claimed = claim_race(None)
    assert sum(bool(v) for v in claimed.values()) >= 2  # the work was shared


def test_dead_workers_jobs_are_taken_over() -> None:
    store = Store()
    job = store.create_job(SPEC)
    dead = Worker(store, name="dead", lease_s=30)
    assert dead.claim(5) == [job.id]
    alive = Worker(store, name="alive", lease_s=30)
    assert alive.claim(5) == []  # the owner is heart-beating: hands off
    store.transition(job.id, "preparing")
    with store.session() as s, s.begin():
        s.execute(
            update(JobRow).where(JobRow.id == job.id).values(heartbeat_at=datetime.now(UTC) - timedelta(minutes=5))
        )
    assert alive.claim(5) == [job.id]
    with store.session() as s:
        assert s.get(JobRow, job.id).worker == "alive"
    dead.heartbeat()  # a worker back from the dead does not get it back by heart-beating
    with store.session() as s:
        assert s.get(JobRow, job.id).worker == "alive"


def test_a_worker_thread_outlives_failing_ticks(monkeypatch) -> None:
    """A store error in a tick is logged and retried: the thread goes on (issue 34)."""
    from sqlalchemy.exc import OperationalError

    worker = Worker(Store(), name="flaky", follow=False)
    calls: list[int] = []
    done = threading.Event()

    def tick() -> list[str]:
        calls.append(1)
        if len(calls) <= 2:
            raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))
        done.set()
        return []

    monkeypatch.setattr(worker, "tick", tick)
    worker.start(poll_s=0.01)
    try:
        assert done.wait(30), "the worker stopped ticking after a failed tick"
        assert worker._thread is not None and worker._thread.is_alive()
    finally:
        worker.stop()


def test_a_machine_claims_local_jobs_up_to_its_capacity_only() -> None:
    """Two workers on one host with capacity 1 start one local training between them; a remote job (a rented
    GPU) is still taken, and the queue's next local job waits its turn (issue 34)."""
    store = Store()
    local = [store.create_job(SPEC).id for _ in range(3)]
    remote_spec = parse_spec(
        {"name": "r", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux", "compute": {"provider": "vastai"}}
    )
    remote = store.create_job(remote_spec).id
    first = Worker(store, slots=10, capacity=1, name="host:1:a")
    second = Worker(store, slots=10, capacity=1, name="host:2:b")
    assert first.claim(10) == [local[0], remote]
    assert second.claim(10) == []  # the host's one local slot is taken, by the other worker
    store.transition(local[0], "cancelled")
    assert second.claim(10) == [local[1]]
