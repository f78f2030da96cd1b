"""The follower: one event loop in a worker process that follows every running remote trainer it was
handed, so hundreds of rented GPUs cost one thread and an SSH connection each, not a process each.

Per job, every `poll_s` seconds: the log's new bytes (SFTP read at the saved offset), the trainer's
liveness (exit-code file, /proc), a stop request (SIGTERM once), the cost meter and budget cap, GPU
utilisation every 30 s, the stall detector, and new checkpoints and samples copied back (the transfer
itself runs on a small shared thread pool with the resumable, checksummed OpenSSH path). Events of all
jobs are written in one transaction per round; a job's log offset is saved only after its events are.

Anything that needs a decision (the trainer ended, the host stopped answering, a stall to act on, the
follower shutting down) hands the job back to its runner process, which re-attaches and decides as it
always does. The hand-off protocol is in running/following.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from loraflow import paths
from loraflow.engines import get_engine
from loraflow.engines.base import host_outputs
from loraflow.errors import LoraflowError
from loraflow.hosts.base import Handle, ProcessStatus
from loraflow.hosts.ssh import HostUnreachable, SshEndpoint
from loraflow.hosts.ssh_async import AsyncSshHost
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Job, Store
from loraflow.layout import JobLayout, handoff_file
from loraflow.monitor import events as ev
from loraflow.providers.registry import is_rented
from loraflow.providers.vast_watch import TOUCH, pump_interval_s
from loraflow.running.following import (
    GPU_EVERY_S,
    CostMeter,
    FollowState,
    Pending,
    TrainerFollow,
    coalesce,
    event_fields,
    follow_file,
    self_follow_file,
    stall_file,
    write_atomic,
)
from loraflow.running.lease_files import sync
from loraflow.running.remote import RemoteLease, note_beat

log = logging.getLogger(__name__)

SYNC_EVERY_S = 15.0
CONNECTS_AT_ONCE = 16


def take_lock(job_dir: Path) -> IO[str] | None:
    """The job's runner lock, held (open) for as long as the follower follows it."""
    (job_dir / "run").mkdir(parents=True, exist_ok=True)
    handle = open(job_dir / "run" / "runner.lock", "a+")  # noqa: SIM115 - kept open while following
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


class _Writes:
    """Events of every followed job, written together: one transaction per round instead of one per line."""

    def __init__(self, store: Store, pool: ThreadPoolExecutor, every_s: float = 0.2) -> None:
        self.store = store
        self.pool = pool
        self.every_s = every_s
        self.items: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.flushing: asyncio.Task[None] | None = None
        self.written = 0

    async def write(self, job_id: str, pending: list[Pending]) -> None:
        """Returns once these events are committed."""
        if not pending:
            return
        self.items += [(job_id, t, d, f) for t, d, f in pending]
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._flush())
        await waiter

    async def _flush(self) -> None:
        await asyncio.sleep(self.every_s)
        items, waiters = self.items, self.waiters
        self.items, self.waiters = [], []
        try:
            await asyncio.get_running_loop().run_in_executor(self.pool, self.store.append_many, items)
            self.written += len(items)
            for w in waiters:
                w.set_result(None)
        except Exception as exc:
            for w in waiters:
                w.set_exception(exc)
        if self.items:  # arrived while we wrote
            self.flushing = asyncio.create_task(self._flush())


class Follower:
    def __init__(self, store: Store, poll_s: float = 1.0, transfer_threads: int = 4) -> None:
        self.store = store
        self.poll_s = poll_s
        self.loop = asyncio.new_event_loop()
        self.pool = ThreadPoolExecutor(transfer_threads, thread_name_prefix="follower-io")
        self.writes = _Writes(store, self.pool)
        self.jobs: dict[str, IO[str]] = {}  # job id -> its held runner lock
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.hosts: dict[SshEndpoint, AsyncSshHost] = {}
        self.records: dict[str, Job] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="follower")
        self._closing = False
        self._connect_gate: asyncio.Semaphore | None = None

    # --- from other threads ----------------------------------------------------------------------

    def start(self) -> Follower:
        self._thread.start()
        self.loop.call_soon_threadsafe(self._start_refresher)
        return self

    def following(self, job_id: str) -> bool:
        return job_id in self.jobs

    def adopt(self, job_id: str) -> bool:
        """Follow a job its runner handed off; False when it was not handed off or someone holds it."""
        if self._closing:
            return False
        if job_id in self.jobs:
            return True
        folder = paths.job_dir(job_id)
        if not handoff_file(JobLayout(str(folder))).exists():
            return False
        lock = take_lock(folder)
        if lock is None:
            return False
        if not handoff_file(JobLayout(str(folder))).exists():  # handed back between the two looks
            lock.close()
            return False
        self.jobs[job_id] = lock
        self.loop.call_soon_threadsafe(self._spawn, job_id)
        return True

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop following: every job goes back to a runner process of its own, so none is left unwatched."""
        self._closing = True
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout_s)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        for job_id in list(self.jobs):  # any the loop could not hand back in time
            self._release(job_id, start=True)
        self.pool.shutdown(wait=False)

    async def _shutdown(self) -> None:
        # Only the followers and the record refresher: pending writes still have to land.
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith(("follow:", "records"))]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                await host.close()

    # --- on the loop -----------------------------------------------------------------------------

    def _start_refresher(self) -> None:
        self._refresher = self.loop.create_task(self._refresh_records(), name="records")

    def _spawn(self, job_id: str) -> None:
        self.records.pop(job_id, None)  # a record from an earlier adoption may be stale
        self.tasks[job_id] = self.loop.create_task(self._follow(job_id), name=f"follow:{job_id}")

    async def _refresh_records(self) -> None:
        """Every followed job's record in one query a second (cost, state, lease)."""
        while True:
            ids = list(self.jobs)
            if ids:
                with contextlib.suppress(Exception):
                    self.records = await self.loop.run_in_executor(self.pool, self.store.jobs_by_id, ids)
            await asyncio.sleep(1.0)

    def _host(self, endpoint: SshEndpoint) -> AsyncSshHost:
        key = endpoint  # frozen: one connection per distinct endpoint
        if key not in self.hosts:
            if self._connect_gate is None:
                self._connect_gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
            self.hosts[key] = AsyncSshHost(endpoint, connect_gate=self._connect_gate)
        return self.hosts[key]

    def _release(self, job_id: str, start: bool) -> None:
        """Give the job back: the hand-off file goes, the lock is let go, and its runner starts again."""
        from loraflow.running.control import start_runner

        lock = self.jobs.pop(job_id, None)
        self.tasks.pop(job_id, None)
        handoff_file(JobLayout(str(paths.job_dir(job_id)))).unlink(missing_ok=True)
        if lock is not None:
            lock.close()
        if start:
            try:
                start_runner(job_id, handoff=not self._closing)
            except Exception:  # the worker's next round starts it
                log.exception("could not start the runner of %s", job_id)

    async def _follow(self, job_id: str) -> None:
        reason = "follower stopped"
        try:
            reason = await self._watch(job_id)
        except asyncio.CancelledError:
            reason = "follower stopped"
        except HostUnreachable as exc:
            reason = f"host unreachable: {exc.message}"
            self._runner_follows(job_id, reason)
        except Exception as exc:  # the runner takes over; nothing is lost (offsets are saved after writes)
            log.exception("following %s failed", job_id)
            reason = f"follower error: {type(exc).__name__}: {exc}"
            self._runner_follows(job_id, reason)
        finally:
            with contextlib.suppress(Exception):
                await self.writes.write(job_id, [("follower.released", {"reason": reason}, {})])
            await self.loop.run_in_executor(None, self._release, job_id, True)

    @staticmethod
    def _runner_follows(job_id: str, reason: str) -> None:
        """The runner decides whether the host is gone; if it is not, it follows the job itself."""
        self_follow_file(JobLayout(str(paths.job_dir(job_id)))).write_text(reason + "\n")

    async def _watch(self, job_id: str) -> str:
        """Follow one job until something needs its runner; returns why."""
        job = await self.loop.run_in_executor(self.pool, self.store.get, job_id)
        spec = job.train_spec
        lease = job.lease or {}
        if job.state is not JobState.TRAINING or not lease.get("ssh") or not lease.get("root"):
            return f"job is {job.state.value} without a ready host"
        engine = get_engine(spec.engine.name)
        layout = JobLayout(str(paths.job_dir(job_id)))
        xlayout = JobLayout(lease["root"])
        outputs = host_outputs(engine, spec, xlayout)  # an engine's own outputs, mirrored by lease_files.sync
        host = self._host(SshEndpoint.from_dict(lease["ssh"]))
        handle = Handle.in_folder(xlayout.run, "train")
        trainer = host.watch(handle)
        follow_path = follow_file(layout)
        state = FollowState.load(follow_path)
        meter = CostMeter(spec, layout)
        now = time.monotonic()
        # GPU questions and copies of hundreds of adopted jobs spread over their windows, not all in one round.
        follow = TrainerFollow(
            spec,
            layout,
            engine.parser(spec),
            now,
            SYNC_EVERY_S,
            collected_at=now - random.uniform(0, SYNC_EVERY_S),
            gpu_offset_s=random.uniform(0, GPU_EVERY_S),
            phase=state.phase,
        )
        remote = RemoteLease(self.store, job_id, spec, layout, self._emit_for(job_id))
        copy_back = functools.partial(sync, remote)
        await self.writes.write(job_id, [("follower.adopted", {"attempt": state.attempt, "offset": state.offset}, {})])
        synced_view = None
        # A rented host destroys itself when nobody touches its heartbeat (providers/vast_watch.py).
        beat_every = pump_interval_s(spec.compute.heartbeat_minutes * 60) if is_rented(lease.get("provider")) else None
        beat_at = 0.0
        warned = state.budget_warned
        try:
            while True:
                pending: list[Pending] = []
                chunk = await trainer.read(state.offset)
                status, _ = await trainer.status()
                running = status is ProcessStatus.RUNNING
                if not running:  # whatever it wrote before it ended
                    chunk += await trainer.read(state.offset + len(chunk))
                now = time.monotonic()
                events = follow.feed(chunk, not running, now)
                pending += [(e.type, e.data, event_fields(e)) for e in coalesce(events)]
                record = self.records.get(job_id)
                if record is not None:
                    if record.state is not JobState.TRAINING:
                        return f"job is {record.state.value}"
                    pending += meter.check(record, state)
                if running and follow.stop_due(now):
                    follow.stop_sent(await host.signal(handle, signal.SIGTERM))
                    pending.append((ev.LOG, {"message": "stop requested: checkpointing"}, {}))
                if beat_every is not None and now - beat_at > beat_every:
                    beat_at = now
                    with contextlib.suppress(Exception):  # an unreachable host shows in the status next
                        if (await host.exec(TOUCH))[0] == 0:
                            note_beat(layout)
                if follow.gpu_due(now):
                    follow.on_gpu(await host.gpu_stats(), now)
                stall = follow.stall(now) if running else None
                if stall is not None:
                    pending.append(follow.stall_event(stall))
                    if spec.monitor.on_stall != "notify" or stall.reason == "no_exit":  # the runner acts
                        await self.writes.write(job_id, pending)
                        state.offset += len(chunk)
                        state.phase = follow.phase
                        state.save(follow_path)
                        write_atomic(stall_file(layout), json.dumps({"reason": stall.reason, "message": stall.message}))
                        return f"stalled: {stall.message}"
                # New checkpoints and samples: after a save line, else when the remote listing changed.
                if running and follow.collect_due(events, now):
                    view = (await host.listing(xlayout.checkpoints), await host.listing(xlayout.samples),
                            await host.listing(outputs) if outputs else {})  # musubi's run folders
                    if view != synced_view and any(view):  # something there, and new
                        copied = await self.loop.run_in_executor(self.pool, copy_back)
                        synced_view = view
                        pending += [(e.type, e.data, event_fields(e)) for e in copied]
                await self.writes.write(job_id, pending)
                if chunk or warned != state.budget_warned:  # saved only once its events are stored
                    state.offset += len(chunk)
                    state.phase = follow.phase
                    warned = state.budget_warned
                    state.save(follow_path)
                if not running:
                    return f"trainer {status.value}"
                await asyncio.sleep(self.poll_s)
        finally:
            await trainer.close()

    def _emit_for(self, job_id: str) -> Any:
        """For lease_files.sync's warnings, called on a transfer thread."""

        def emit(type_: str, data: dict[str, Any]) -> None:
            try:
                self.store.append_event(job_id, type_, data)
            except LoraflowError:
                log.exception("could not record %s for %s", type_, job_id)

        return emit
