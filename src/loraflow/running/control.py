"""A job's runner process seen from outside it: start it (at most one per job), tell whether it is alive,
ask it to stop, resume its job. Every door (CLI, API, web UI, notebook, worker, follower) goes through here;
the runner itself is running/runner.py, started as `python -m loraflow.running.runner JOB_ID`."""

from __future__ import annotations

import contextlib
import fcntl
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from loraflow import paths
from loraflow.errors import IllegalTransition, Refused
from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost, pid_alive
from loraflow.jobs.states import ACTIVE, RESUMABLE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout, handoff_file
from loraflow.running.following import budget_stop_file


@contextlib.contextmanager
def runner_lock(job_dir: Path, blocking: bool = False) -> Iterator[bool]:
    """Held by the one runner of a job; yields False when another runner holds it."""
    (job_dir / "run").mkdir(parents=True, exist_ok=True)
    with open(job_dir / "run" / "runner.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def request_stop(job_id: str) -> None:
    """Ask a job to stop: a request file the runner honours, and SIGTERM to the trainer so it checkpoints now.
    A runner is started when none is alive, so the outcome is always recorded."""
    layout = JobLayout(str(paths.job_dir(job_id)))
    Path(layout.run).mkdir(parents=True, exist_ok=True)
    Path(layout.stop_request).touch()
    LocalHost().signal(Handle.in_folder(layout.run, "train"), signal.SIGTERM)
    start_runner(job_id)


def stop(store: Store, job_id: str) -> None:
    """Stop an active job after a checkpoint, or refuse: the API, the CLI and the web UI all stop through
    here, so a job that is not running is refused alike (409 on the API, exit code 2 on the CLI)."""
    job = store.get(job_id)
    if job.state not in ACTIVE:
        raise Refused(409, "conflict", f"job {job_id} is {job.state.value}, not running: there is nothing to stop")
    request_stop(job_id)


def resume(store: Store, job_id: str) -> None:
    """Continue a stopped, failed or budget-stopped job (or make sure an active one has its runner).
    The CLI, the API and the web UI all resume through here. A job the workers run (`queued`) goes back
    into their queue, unclaimed, so it waits for a slot like a new one instead of being started here."""
    job = store.get(job_id)
    queued = job.outputs.queued
    if job.state in RESUMABLE:
        layout = JobLayout(str(paths.job_dir(job_id)))
        Path(layout.stop_request).unlink(missing_ok=True)  # an old stop must not end the resumed run
        budget_stop_file(layout).unlink(missing_ok=True)
        unclaimed = {"worker": None, "heartbeat_at": None} if queued else {}
        store.transition(job_id, JobState.PENDING, data={"resume": True}, **unclaimed)
    elif job.state not in ACTIVE:
        raise IllegalTransition(f"job {job_id} is {job.state.value} and cannot be resumed")
    if not queued:
        start_runner(job_id)


def runner_alive(job_id: str) -> bool:
    """A runner holds the job's lock, or its process is still starting (importing, before it locks)."""
    with runner_lock(paths.job_dir(job_id)) as got:
        if not got:
            return True
    return runner_starting(job_id)


def runner_starting(job_id: str) -> bool:
    """The job's last started runner process is alive. Without this, a worker tick or `jobs list` that
    came while a runner was still importing saw the lock free and started a second one, whose pid
    replaced the first's in run/runner.pid (the second found the lock taken and exited)."""
    pid = LocalHost().pid(Handle.in_folder(str(paths.job_dir(job_id) / "run"), "runner"))
    if pid is None or not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to tell a reused pid from ours: trust the pid file
    return b"loraflow.running.runner" in cmdline and job_id.encode() in cmdline


def start_runner(job_id: str, handoff: bool = False) -> Handle:
    """Start the job's runner detached (it survives this terminal); a no-op when one is running or a
    follower has the job. With `handoff`, the runner gives a launched remote trainer to the follower."""
    folder = paths.job_dir(job_id)
    handle = Handle.in_folder(str(folder / "run"), "runner")
    host = LocalHost()
    now = time.monotonic()
    lock_deadline, start_deadline = now + 5, now + 60
    while True:
        with runner_lock(folder) as got:
            held = not got
        if held:
            if handoff_file(JobLayout(str(folder))).exists():
                return handle  # a follower holds the lock and follows the job
            pid = host.pid(handle)
            if (pid is not None and pid_alive(pid)) or time.monotonic() > lock_deadline:
                return handle  # a live runner has the job
            # else: a runner just killed still holds its lock for a moment
        elif not runner_starting(job_id) or time.monotonic() > start_deadline:
            break
        # (alive without the lock: still starting, so it takes the lock next, or ending, so it exits)
        time.sleep(0.05)
    env = {"LORAFLOW_HANDOFF": "1" if handoff else "0"}
    host.run([sys.executable, "-m", "loraflow.running.runner", job_id], str(folder), handle, env, inherit=True)
    host.wait_started(handle)
    return handle
