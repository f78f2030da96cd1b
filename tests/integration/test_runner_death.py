"""A runner that dies is noticed without a user command, and a full disk is named as such.

SIGTERM to a runner leaves the job resumable and says so; a worker starts the runner again on its next
tick, and for a CLI user `loraflow jobs list` does; the new runner re-attaches to the trainer that kept
running, so nothing is trained twice.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost, pid_alive
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.running.orphans import orphans
from loraflow.running.runner import JobRunner
from loraflow.running.worker import Worker
from loraflow.spec import load_spec
from tests.integration.test_local_jobs import only_job, wait_for, write_spec


def _pids(job_folder: Path) -> tuple[int, int]:
    layout = JobLayout(str(job_folder))
    runner = LocalHost().pid(Handle.in_folder(layout.run, "runner"))
    trainer = LocalHost().pid(Handle.in_folder(layout.run, "train"))
    assert runner and trainer
    return runner, trainer


def _terminate_runner(store: Store, job_id: str) -> int:
    """SIGTERM the runner mid-training; returns the trainer's pid (it must keep running)."""
    wait_for(lambda: store.get(job_id).step >= 10, what="training to pass step 10")
    runner, trainer = _pids(store.get(job_id).folder)
    os.kill(runner, signal.SIGTERM)
    wait_for(lambda: bool(store.events(job_id, types=["runner.stopped"])), what="the runner to say it left")
    return trainer


def _assert_trained_once(store: Store, job_id: str, trainer: int) -> None:
    job = store.get(job_id)
    assert job.state is JobState.COMPLETED and job.step == 200, job.error
    launched = store.events(job_id, types=["train.launched"])
    assert len(launched) == 1 and launched[0].data["pid"] == trainer  # re-attached, never relaunched
    assert store.events(job_id, types=["resumed"]) == []
    (left,) = store.events(job_id, types=["runner.stopped"])
    assert left.data["signal"] == signal.SIGTERM and left.data["state"] == "training"


def test_sigterm_runner_of_a_cli_job_is_adopted_by_jobs_list(tmp_path: Path, cli) -> None:
    assert cli("train", write_spec(tmp_path, steps=200), "--detach").code == 0
    store = Store()
    job = only_job(store)
    trainer = _terminate_runner(store, job.id)
    runner = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "runner"))
    wait_for(lambda: runner is None or not pid_alive(runner), what="the runner to exit")
    assert store.get(job.id).state is JobState.TRAINING and orphans(store) == [job.id]
    listed = cli("jobs", "list")
    assert listed.code == 0 and "started it again" in listed.out
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the job to finish")
    _assert_trained_once(store, job.id, trainer)
    assert len(store.events(job.id, types=["runner.adopted"])) == 1
    assert orphans(store) == []


def test_sigterm_runner_of_a_worker_job_is_restarted_by_the_worker(tmp_path: Path) -> None:
    store = Store()
    job = store.create_job(load_spec(write_spec(tmp_path, steps=200)))
    worker = Worker(store, slots=1, lease_s=30, follow=False).start(poll_s=0.3)
    try:
        trainer = _terminate_runner(store, job.id)
        wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the job to finish")
    finally:
        worker.stop()
    _assert_trained_once(store, job.id, trainer)


def test_disk_full_in_the_runner_fails_as_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC where the runner records what it follows (run/follow.json) ends the job as `disk_full` with
    its hint, not `internal`."""
    from loraflow.running import following

    original = following.write_atomic

    def full(path: Path, text: str) -> None:
        if path.name == "follow.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(path, text)

    monkeypatch.setattr(following, "write_atomic", full)
    store = Store()
    job = store.create_job(load_spec(write_spec(tmp_path, steps=10)))
    try:
        assert JobRunner(store, job.id).run() is JobState.FAILED
    finally:
        trainer = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "train"))
        if trainer and pid_alive(trainer):
            os.kill(trainer, signal.SIGKILL)
    (error,) = [e.data for e in store.events(job.id, types=["error"])]
    assert error["code"] == "disk_full" and "follow.json" in error["message"]
    assert "disk is full" in error["hint"]


def test_what_counts_as_an_orphan(tmp_path: Path) -> None:
    """Only an unclaimed, started job with no live runner and a stale heartbeat is adopted."""
    from datetime import UTC, datetime, timedelta

    from loraflow.running.control import runner_lock

    store = Store()
    job = store.create_job(load_spec(write_spec(tmp_path)))
    (job.folder / "run").mkdir(parents=True, exist_ok=True)
    assert orphans(store) == []  # pending: a worker's queue or a runner about to start
    for state in ("preparing", "provisioning", "training"):
        store.transition(job.id, state)
    assert orphans(store) == [job.id]
    store.update(job.id, heartbeat_at=datetime.now(UTC))
    assert orphans(store) == []  # a runner elsewhere stamped it just now
    store.update(job.id, heartbeat_at=datetime.now(UTC) - timedelta(minutes=5))
    assert orphans(store) == [job.id]
    with runner_lock(job.folder) as got:
        assert got and orphans(store) == []  # a runner holds the job
    store.update(job.id, worker="elsewhere:1:abc")
    assert orphans(store) == []  # a worker's job: that worker restarts its runner
