"""The job store's code on a real PostgreSQL server, started by the fixture (installed by `make test`)."""

from __future__ import annotations

import glob
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraflow.errors import IllegalTransition
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.spec import parse_spec

SPEC = parse_spec({"name": "pg", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux"})


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(found[0]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed here (make test installs it from Debian's packages when it can)")
    pytest.importorskip("psycopg")
    root = Path(tempfile.mkdtemp(prefix="loraflow-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user, in a folder it owns
        shutil.chown(root, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    subprocess.run(
        [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def test_store_lifecycle_on_postgres(pg_url: str) -> None:
    store = Store(pg_url)
    job = store.create_job(SPEC)
    for state in ("preparing", "provisioning", "training"):
        store.transition(job.id, state)
    store.append_event(job.id, "progress", {"step": 3, "total": 30, "loss": 0.5}, step=3, loss=0.5)
    with pytest.raises(IllegalTransition):
        store.transition(job.id, "awaiting_approval")
    again = Store(pg_url).get(job.id)
    assert again.state is JobState.TRAINING and again.step == 3 and again.loss == 0.5
    assert [e.seq for e in store.events(job.id)] == [1, 2, 3, 4, 5]
    assert store.find(job.id[:8]).id == job.id
    assert job.id in [j.id for j in store.list_jobs(states=["training"])]


def _writer(url: str, job_id: str, n: int) -> None:
    store = Store(url)
    for i in range(n):
        store.append_event(job_id, "progress", {"i": i})


def test_concurrent_writers_on_postgres(pg_url: str) -> None:
    store = Store(pg_url)
    job = store.create_job(SPEC)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(pg_url, job.id, 20)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert [e.seq for e in store.events(job.id)] == list(range(1, 62))


def test_workers_never_claim_the_same_job_on_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.server.test_worker import claim_race

    # The race between workers, not this machine's training capacity (tests/server/test_worker.py has that).
    monkeypatch.setenv("LORAFLOW_GPU_SLOTS", "1000")

    claimed = claim_race(pg_url, jobs=60, workers=4)
    assert sum(bool(v) for v in claimed.values()) >= 2  # SKIP LOCKED let them share the work


def test_follower_batches_and_runner_appends_interleave_on_postgres(pg_url: str) -> None:
    """The follower writes many jobs' events in one transaction while a runner appends to one of them:
    every job's sequence stays gapless and the row fields follow the last progress."""
    store = Store(pg_url)
    a, b = store.create_job(SPEC), store.create_job(SPEC)

    def follower() -> None:
        s = Store(pg_url)
        for i in range(20):
            s.append_many([
                (b.id, "progress", {"step": i, "total": 20}, {"step": i}),
                (a.id, "progress", {"step": i, "total": 20}, {"step": i}),
            ])  # fmt: skip

    def runner() -> None:
        s = Store(pg_url)
        for i in range(20):
            s.append_event(a.id, "log", {"message": str(i)})

    threads = [threading.Thread(target=follower), threading.Thread(target=runner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [e.seq for e in store.events(a.id)] == list(range(1, 42))
    assert [e.seq for e in store.events(b.id)] == list(range(1, 22))
    assert store.get(b.id).step == 19 and store.get(a.id).step == 19
