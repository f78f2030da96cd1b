"""A disk that fills up at a checkpoint, for real: LORAFLOW_HOME (the job store and the job folders) on a
small tmpfs that the test fills right after the first checkpoint. The job ends `failed` with
`disk_full` at once, the runner never crashes, and the checkpoint saved before is intact."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost, pid_alive
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.trainer.checkpoint import verify
from tests.integration.test_local_jobs import only_job, wait_for, write_spec


@pytest.fixture
def small_disk(loraflow_home: Path) -> Iterator[Path]:
    """LORAFLOW_HOME on its own 64 MiB tmpfs (skipped where mounting is not permitted)."""
    loraflow_home.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(loraflow_home)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'mount failed'}")
    try:
        yield loraflow_home
    finally:
        subprocess.run(["umount", "-l", str(loraflow_home)], capture_output=True)


def fill(folder: Path) -> None:
    """Write until the disk says it is full (real data: a sparse file would take no room)."""
    block = b"\xa5" * (1 << 16)
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with open(folder / "filler-tail", "wb", buffering=0) as handle:  # the last few bytes too
        try:
            while True:
                handle.write(b"\xa5" * 512)
        except OSError:
            pass


@pytest.mark.timeout(600)
def test_disk_full_at_a_checkpoint_with_the_store_on_it_fails_as_disk_full(
    tmp_path: Path, cli, small_disk: Path
) -> None:
    """Before: the runner crashed while recording it (SQLite: "database or disk is full"); the job stayed
    `training` with no error and no exit code until space was freed and a person ran `jobs list`."""
    assert cli("train", write_spec(tmp_path, steps=200), "--detach").code == 0
    store = Store()
    job = only_job(store)
    layout = JobLayout(str(job.folder))
    wait_for(lambda: bool(store.events(job.id, types=["checkpoint.saved"])), timeout=300, what="a checkpoint")
    fill(small_disk)
    try:
        try:
            wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=120, what="the job to end")
        except AssertionError:
            print("DEBUG", store.get(job.id).state, [(e.type, str(e.data)[:100]) for e in store.events(job.id)][-8:])
            for f in Path(layout.run).iterdir():
                print("DEBUG", f.name, f.read_text(errors="replace")[-6000:] if f.suffix in (".log", "") else "")
            raise
    finally:
        trainer = LocalHost().pid(Handle.in_folder(layout.run, "train"))
        if trainer and pid_alive(trainer):
            os.kill(trainer, signal.SIGKILL)
    ended = store.get(job.id)
    assert ended.state is JobState.FAILED
    errors = [e.data for e in store.events(job.id, types=["error"])]
    assert errors and errors[-1]["code"] == "disk_full" and "disk is full" in errors[-1]["hint"]
    saved = store.events(job.id, types=["checkpoint.saved"])[0].data["path"]
    assert verify(Path(job.folder) / saved)[0]  # the checkpoint saved before the disk filled is whole
