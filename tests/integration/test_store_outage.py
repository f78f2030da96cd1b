"""A store that goes away while a job trains: a real PostgreSQL server stopped and started again by the
fixture, and a real SQLite lock held by another process. The trainer goes on; the runner waits the store
out and then records what the trainer did meanwhile from its own log, and the job completes."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost, pid_alive
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.running.orphans import orphans
from tests.integration.test_local_jobs import only_job, wait_for, write_spec
from tests.integration.test_store_postgres import _free_port, _pg_bin


class Postgres:
    """A PostgreSQL server of the test's own, which the test stops and starts."""

    def __init__(self) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None:
            pytest.skip("PostgreSQL is not installed here (make test installs it from Debian's packages when it can)")
        pytest.importorskip("psycopg")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="loraflow-pg-"))
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            shutil.chown(self.root, "postgres", "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.data, self.port = self.root / "data", _free_port()
        self._ctl("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, tool: str, *args: str) -> None:
        subprocess.run([*self.prefix, str(self.bin / tool), *args], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._ctl("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        self._ctl("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    yield server
    server.close()


def _exit_file(store: Store, job_id: str) -> Path:
    """Where the trainer writes its exit code (looked up before the store goes away)."""
    return Path(Handle.in_folder(JobLayout(str(store.get(job_id).folder)).run, "train").exit_file)


def _assert_recorded_after_the_outage(store: Store, job_id: str) -> None:
    job = store.get(job_id)
    assert job.state is JobState.COMPLETED and job.step == 30, job.error
    saved = [e.data["step"] for e in store.events(job_id, types=["checkpoint.saved"])]
    assert saved == [10, 20, 30]  # every save the trainer made while the store was away
    assert len(store.events(job_id, types=["train.launched"])) == 1  # re-attached, never relaunched
    assert store.events(job_id, types=["result"])


@pytest.mark.timeout(900)
def test_postgres_stopped_while_training_is_ridden_out(
    tmp_path: Path, cli, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL stops right after the launch and stays down until the trainer has ended (before: the
    runner died at its first write and the job stayed `training` until a person ran `jobs list`)."""
    monkeypatch.setenv("LORAFLOW_DATABASE_URL", postgres.url)
    monkeypatch.setenv("LORAFLOW_STORE_OUTAGE_S", "300")
    assert cli("train", write_spec(tmp_path), "--detach").code == 0
    store = Store(postgres.url, ride_out_s=300)
    job = only_job(store)
    wait_for(lambda: bool(store.events(job.id, types=["train.launched"])), what="the launch")
    exit_file = _exit_file(store, job.id)
    postgres.stop()
    try:
        wait_for(exit_file.exists, timeout=300, what="the trainer to end during the outage")
    finally:
        postgres.start()
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the job to end")
    _assert_recorded_after_the_outage(store, job.id)


LOCKER = """
import sqlite3, sys, time, pathlib
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
pathlib.Path(sys.argv[2]).write_text("locked")
while not pathlib.Path(sys.argv[3]).exists():
    time.sleep(0.05)
conn.execute("ROLLBACK")
"""


@contextlib.contextmanager
def sqlite_locked(store: Store, tmp_path: Path) -> Iterator[None]:
    """Another process holds the store's SQLite file in an exclusive transaction for the block's duration."""
    locked, release = tmp_path / "locked", tmp_path / "release"
    database = store.url.removeprefix("sqlite:///")
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, database, str(locked), str(release)])
    try:
        wait_for(locked.exists, what="the other process to hold the lock")
        yield
    finally:
        release.touch()
        locker.wait(30)


@pytest.mark.timeout(900)
def test_sqlite_locked_by_another_process_is_ridden_out(
    tmp_path: Path, cli, loraflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the SQLite file locked past every statement's busy timeout while the trainer
    runs (before: the runner failed the job though its trainer was fine)."""
    monkeypatch.setenv("LORAFLOW_SQLITE_BUSY_S", "0.5")
    monkeypatch.setenv("LORAFLOW_STORE_OUTAGE_S", "300")
    assert cli("train", write_spec(tmp_path), "--detach").code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: bool(store.events(job.id, types=["train.launched"])), what="the launch")
    with sqlite_locked(store, tmp_path):
        wait_for(_exit_file(store, job.id).exists, timeout=300, what="the trainer to end under the lock")
        assert store.get(job.id).state is JobState.TRAINING  # nothing could be written meanwhile
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the job to end")
    _assert_recorded_after_the_outage(store, job.id)


@pytest.mark.timeout(900)
def test_a_runner_that_gives_up_past_the_outage_bound_is_adopted(
    tmp_path: Path, cli, loraflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store stays locked longer than LORAFLOW_STORE_OUTAGE_S: the runner gives up and exits, leaving the
    job as it is (not failed: the trainer goes on). Once the store answers, the next `loraflow jobs list`
    adopts the job without anyone naming it, and its new runner records what the trainer did meanwhile."""
    monkeypatch.setenv("LORAFLOW_SQLITE_BUSY_S", "0.5")
    monkeypatch.setenv("LORAFLOW_STORE_OUTAGE_S", "3")
    assert cli("train", write_spec(tmp_path), "--detach").code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: bool(store.events(job.id, types=["train.launched"])), what="the launch")
    runner = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "runner"))
    assert runner is not None
    exit_file = _exit_file(store, job.id)
    with sqlite_locked(store, tmp_path):
        wait_for(lambda: not pid_alive(runner), timeout=300, what="the runner to give up on the store")
        wait_for(exit_file.exists, timeout=300, what="the trainer to end under the lock")
    assert store.get(job.id).state is JobState.TRAINING  # left for the next runner, not failed
    wait_for(lambda: orphans(store) == [job.id], what="the job to be seen as an orphan")
    assert cli("jobs", "list").code == 0
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the adopted job to end")
    _assert_recorded_after_the_outage(store, job.id)
    assert store.events(job.id, types=["runner.adopted"])


@pytest.mark.timeout(900)
def test_a_workers_job_whose_runner_gave_up_on_the_store_is_adopted_by_the_worker(
    tmp_path: Path, loraflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same outage under a worker (`loraflow serve`, `loraflow worker`): the runner gives up past the
    bound, the worker's ticks fail while the store is locked, and once it answers the worker's next tick
    starts a runner again, with nobody running a command (before: the first failed tick ended the worker
    thread for good and the job stayed `training` with its trainer long done)."""
    from loraflow.running.worker import Worker
    from loraflow.spec import load_spec

    monkeypatch.setenv("LORAFLOW_SQLITE_BUSY_S", "0.5")
    monkeypatch.setenv("LORAFLOW_STORE_OUTAGE_S", "3")
    store = Store()
    job = store.create_job(load_spec(write_spec(tmp_path)))
    worker = Worker(store, slots=1, follow=False).start(poll_s=0.2)
    try:
        wait_for(lambda: bool(store.events(job.id, types=["train.launched"])), what="the launch")
        runner = LocalHost().pid(Handle.in_folder(JobLayout(str(store.get(job.id).folder)).run, "runner"))
        assert runner is not None
        exit_file = _exit_file(store, job.id)
        with sqlite_locked(store, tmp_path):
            wait_for(lambda: not pid_alive(runner), timeout=300, what="the runner to give up on the store")
            wait_for(exit_file.exists, timeout=300, what="the trainer to end under the lock")
        wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the worker to finish the job")
        assert worker._thread is not None and worker._thread.is_alive()
    finally:
        worker.stop()
    _assert_recorded_after_the_outage(store, job.id)
