"""The job runner: one detached process per job that moves it through its stages and follows training.

Every stage checks what is already done and records its outcome before the next starts, so a runner
killed at any point is simply started again: it re-attaches to a training process that is still
running (from its pid, log offset and exit-code files) instead of starting a second one.

    python -m loraflow.running.runner JOB_ID
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

from loraflow import paths
from loraflow.engines import get_engine
from loraflow.engines.installed import require_engine
from loraflow.errors import LoraflowError, UserInputError
from loraflow.hosts.base import Handle, ProcessStatus
from loraflow.hosts.local import LocalHost
from loraflow.hosts.ssh import HostUnreachable
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Job, Store
from loraflow.layout import JobLayout, handoff_file
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.monitor.stall import Stall
from loraflow.running.control import runner_lock
from loraflow.running.following import (
    CostMeter,
    FollowState,
    Watchdog,
    budget_stop_file,
    event_fields,
    follow_file,
    self_follow_file,
    stall_file,
    write_atomic,
)
from loraflow.running.remote import HeartbeatPump, RemoteLease, is_remote
from loraflow.spec import TrainSpec

ORDER = [JobState.PENDING, JobState.PREPARING, JobState.PROVISIONING, JobState.TRAINING, JobState.FINISHING]
THROTTLED = {ev.PROGRESS, "caching"}
# Failures a restart cannot fix (or that the stall policy says to fail on).
NOT_RETRYABLE = {"oom", "hf_gated", "hf_auth", "bad_input", "missing_file", "disk_full", "stalled", "nan_loss",
                 "fal_auth", "fal_failed"}


class StopAsked(Exception):
    """A stop, cancel or budget stop found at a point between stages: the job ends there."""


class Terminated(BaseException):
    """SIGTERM to the runner (a shutdown, `kill`): it leaves the job as it is, resumable, and exits.
    A BaseException so that no `except Exception` turns it into a job failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def disk_full(exc: BaseException) -> bool:
    """ENOSPC from a file write, or SQLite saying the same about the job store."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "database or disk is full" in str(exc) or "No space left on device" in str(exc)


class JobRunner:
    def __init__(self, store: Store, job_id: str, poll_s: float = 0.25) -> None:
        self.store = store
        self.job_id = job_id
        self.poll_s = poll_s
        self.host = LocalHost()
        self.dir = paths.job_dir(job_id)
        self.layout = JobLayout(str(self.dir))
        self.job = store.get(job_id)
        self.spec: TrainSpec = self.job.train_spec
        self.engine = get_engine(self.spec.engine.name)
        self._last_write = 0.0
        self._last_heartbeat = 0.0
        self._last_error: dict[str, Any] | None = None
        self._pending: EngineEvent | None = None
        from loraflow.notify.wandb_sink import WandbSink

        self.wandb = WandbSink(self.spec, job_id, self.dir)
        self.remote = RemoteLease(store, job_id, self.spec, self.layout, self._emit) if is_remote(self.spec) else None
        self.meter = CostMeter(self.spec, self.layout)
        self._accounted = 0.0
        # Set by a worker that has a follower: once training runs, the follower follows it, not us.
        # (W&B's SDK keeps one run per process, so a job logging to it is followed by its own runner.)
        self.handoff = os.environ.get("LORAFLOW_HANDOFF") == "1" and self.remote is not None
        self.handoff = self.handoff and not self.spec.wandb.enabled
        self._terminated: int | None = None  # the signal that asked this runner to leave
        self._interruptible = False  # inside an idempotent stage or the follow loop's wait

    def on_terminate(self, signum: int, _frame: Any) -> None:
        """SIGTERM handler (installed by main): leave at once where that is safe, else at the next check."""
        self._terminated = signum
        if self._interruptible:
            self._interruptible = False
            raise Terminated(signum)

    def _leave_if_asked(self) -> None:
        if self._terminated is not None:
            raise Terminated(self._terminated)

    @contextlib.contextmanager
    def _interruptible_part(self) -> Iterator[None]:
        """A part that may stop anywhere (each stage checks what is done); elsewhere, for instance between
        launching the trainer and recording it, a SIGTERM waits for the next check."""
        self._leave_if_asked()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def _emit(self, type_: str, data: dict[str, Any]) -> None:
        self.store.append_event(self.job_id, type_, data)

    @property
    def xhost(self) -> Any:
        """Where training runs: this machine or the leased host."""
        return self.remote.host() if self.remote else self.host

    @property
    def xlayout(self) -> JobLayout:
        return self.remote.layout() if self.remote else self.layout

    @property
    def budget_stop_file(self) -> Path:
        return budget_stop_file(self.layout)

    # --- state helpers ---------------------------------------------------------------------------

    def _refresh(self) -> Job:
        self.job = self.store.get(self.job_id)
        return self.job

    def _advance(self, target: JobState) -> None:
        """Move forward through ORDER to target (never backwards)."""
        current = self._refresh().state
        while current in ORDER and ORDER.index(current) < ORDER.index(target):
            current = ORDER[ORDER.index(current) + 1]
            self.store.transition(self.job_id, current)

    def _stage(self, name: str) -> bool:
        """True when the stage still has to run; records stage.started."""
        if name in self._refresh().stages_done:
            return False
        self.store.append_event(self.job_id, "stage.started", {"stage": name}, stage=name)
        self.store.update(self.job_id, stage=name)
        return True

    def _fail(self, message: str, hint: str = "", code: str = "failed") -> JobState:
        self._release_now("job failed")
        self.store.append_event(self.job_id, ev.ERROR, {"code": code, "message": message, "hint": hint})
        self.store.transition(
            self.job_id, JobState.FAILED, error=f"{message} {hint}".strip(), data={"message": message}
        )
        return JobState.FAILED

    # --- entry -----------------------------------------------------------------------------------

    def run(self) -> JobState:
        with runner_lock(self.dir) as got:
            if not got:
                return self._refresh().state
            notifier = self._start_notifier()
            vast = self.remote is not None and self.spec.compute.provider == "vastai"
            pump = HeartbeatPump(self.remote).start() if vast and self.remote else None  # feeds the host's watcher
            try:
                return self._run()
            except Terminated as exc:
                return self._left(exc.signum)
            except UserInputError as exc:
                return self._fail(exc.message, exc.fix or "", code=getattr(exc, "code", "bad_input"))
            except LoraflowError as exc:
                if disk_full(exc) or (exc.__cause__ is not None and disk_full(exc.__cause__)):
                    return self._fail_disk_full(exc)
                return self._fail(exc.render())
            except Exception as exc:  # never leave a job "active" with nobody working on it
                import traceback

                traceback.print_exc()
                if disk_full(exc):
                    return self._fail_disk_full(exc)
                return self._fail(f"{type(exc).__name__}: {exc}", code="internal")
            finally:
                if pump is not None:
                    pump.stop()
                self._release_if_idle()
                if notifier is not None:
                    notifier.stop()
                self.wandb.close()

    def _left(self, signum: int) -> JobState:
        """The runner was asked to go: the trainer (detached) keeps training, the state stays as it is,
        and the heartbeat is cleared so the worker or `loraflow jobs list` starts a runner again at once."""
        if self._pending is not None:  # a throttled progress line: its offset is already consumed
            self._write(self._pending)
            self._pending = None
        job = self._refresh()
        self._emit(
            "runner.stopped",
            {
                "signal": signum,
                "state": job.state.value,
                "step": job.step,
                "message": f"the job's runner got signal {signum} and left; the job stays {job.state.value} "
                "and continues where it is when a runner starts again (a worker does it by itself; "
                f"else `loraflow jobs list` or `loraflow jobs resume {self.job_id}`)",
            },
        )
        from loraflow.running.orphans import runner_left

        runner_left(self.store, self.job_id)
        return job.state

    def _fail_disk_full(self, exc: BaseException) -> JobState:
        from loraflow.hints import match_hint

        hint = match_hint("No space left on device")
        assert hint is not None
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        return self._fail(f"the disk is full{where}: {exc}", hint.hint, code="disk_full")

    def _release_if_idle(self) -> None:
        """A rented host is let go as soon as the job stops needing it, whatever the reason."""
        job = self._refresh()
        if job.state not in ORDER or "train" in job.stages_done:
            self._release_now(f"job {job.state.value}")

    def _release_now(self, reason: str) -> None:
        """Before a job is shown as ended, its rented host is gone (and its cost final)."""
        if self.remote is None or not self._refresh().lease:
            return
        try:
            self.remote.release(reason)
        except Exception as exc:  # reported, and `loraflow reap` finds it by label
            self._emit(ev.ERROR, {"code": "release_failed", "message": str(exc), "hint": "run `loraflow reap`"})

    def _run(self) -> JobState:
        state = self._refresh().state
        if state not in ORDER:
            return state
        if "train" not in self.job.stages_done:
            require_engine(self.spec)  # before any stage: fails the job with engine_missing and the fix
        try:
            self._stop_point()
            self._advance(JobState.PREPARING)
            with self._interruptible_part():
                self._prepare()
            self._stop_point()
            with self._interruptible_part():
                self._render()
            self._stop_point()
            self._advance(JobState.PROVISIONING)
            with self._interruptible_part():
                self._acquire()
            self._stop_point()
            self._advance(JobState.TRAINING)
        except StopAsked:
            return self._end_stop()
        result = self._train()
        if result is not None:
            return result
        self._release_if_idle()
        self._advance(JobState.FINISHING)
        self._package()
        if self.spec.publish.approval_required:
            self.store.transition(self.job_id, JobState.AWAITING_APPROVAL)
            return JobState.AWAITING_APPROVAL
        self._publish()
        self.store.transition(self.job_id, JobState.COMPLETED, stage=None)
        self.store.append_event(self.job_id, "job.completed", {"bundle": self._refresh().artifacts.get("bundle")})
        return JobState.COMPLETED

    # --- stop, cancel and budget stop: one end -----------------------------------------------------

    def _stop_asked(self) -> bool:
        return Path(self.layout.stop_request).exists()

    def _stop_point(self) -> None:
        """Checked between stages: after a stop or cancel nothing more is rendered, rented or launched.
        Once the job is training, the train stage ends the stop (after the trainer saved and its
        checkpoints were copied off the host), so a runner taking a stopped job back goes there."""
        if self._refresh().state is JobState.TRAINING:
            return
        if self._stop_asked():
            raise StopAsked

    def _end_stop(self) -> JobState:
        """The one end of a user's stop, a cancel and the budget cap. The trainer has exited (it saves a
        checkpoint on SIGTERM) and its checkpoints were copied here before this runs, so the newest one
        is on the user's side before the host is let go; when there is none the event says why."""
        budget = self.budget_stop_file.exists() and self._refresh().state in (JobState.PROVISIONING, JobState.TRAINING)
        Path(self.layout.stop_request).unlink(missing_ok=True)
        self.budget_stop_file.unlink(missing_ok=True)
        lease = self._refresh().lease if self.remote is not None else None
        if lease and lease.get("ready"):
            try:  # whatever the trainer saved last is copied before the host is let go
                self._record(self.remote.sync(), None, final=True)
            except Exception as exc:  # a host already gone: what was copied before is what the user has
                self._emit(ev.WARNING, {"message": f"could not copy the last checkpoints off the host: {exc}"})
        step = self._refresh().step
        data: dict[str, Any] = {"step": step, **self._checkpoint_note(step)}
        self._release_now("budget reached" if budget else "stopped")
        target = JobState.STOPPED_BUDGET if budget else JobState.STOPPED
        if budget:
            data["usd"] = round(self._refresh().cost_usd, 4)
        self.store.transition(self.job_id, target, stage=None, data=data)
        self._emit("job.stopped_budget" if budget else "job.stopped", data)
        return target

    def _checkpoint_note(self, step: int) -> dict[str, Any]:
        folder = Path(self.layout.checkpoints)
        saved = sorted(
            p.name
            for p in (folder.glob("step-*") if folder.is_dir() else [])
            if not p.name.endswith(".partial") and (p / "meta.json").exists()
        )
        if saved:
            return {"checkpoint": f"checkpoints/{saved[-1]}"}
        every = self.spec.checkpointing.every_n_steps
        reason = f"no checkpoint existed (stopped at step {step}; the trainer saves every {every} steps and on a stop)"
        return {"checkpoint": None, "reason": reason}

    # --- stages ----------------------------------------------------------------------------------

    def _prepare(self) -> None:
        if not self._stage("prepare"):
            return
        from loraflow.dataset import DatasetRun

        dataset = Path(self.layout.dataset)
        if dataset.exists() and not (dataset / "manifest.json").exists():
            import shutil

            shutil.rmtree(dataset)  # a prepare cut short: do it again
        if not dataset.exists():
            d = self.spec.dataset
            policy = d.captions
            if self.remote is not None and self.remote.captions_here():  # captioned on the GPU host
                policy = policy.model_copy(update={"backend": "existing"})
            from loraflow.engines.musubi import video_needs

            clips = video_needs(self.spec)  # musubi's clips are prepared with the images
            report = DatasetRun(d.path, d.checks, policy, d.trigger_word, d.caption_extension, clips).prepare(dataset)
            for finding in report.findings:
                if finding.severity.value != "info":
                    self.store.append_event(self.job_id, "dataset.finding", finding.to_dict())
            if report.output is None:
                lines = "; ".join(f.line() for f in report.errors)
                raise UserInputError(
                    f"the dataset is not fit to train: {lines}",
                    fix="run `loraflow dataset check` on it and fix the errors",
                )
            self.store.add_artifacts(self.job_id, dataset_hash=report.dataset_hash, images=report.usable_images)
        self.store.mark_stage_done(self.job_id, "prepare")

    def _render(self) -> None:
        if not self._stage("render"):
            return
        if self.engine.name == "builtin" and (self.remote is None or self.spec.base_model == "tiny-flux"):
            from loraflow.trainer.model_source import resolve_model_path

            model = str(resolve_model_path(self.spec))
        else:  # external engines fetch hub models themselves; a local folder is passed as it is
            entry = self.spec.catalog_entry
            model = entry.hub_id if self.spec.base_model == entry.id and entry.hub_id else self.spec.base_model
        files = self.engine.render(
            self.spec, self.layout, self.job_id, model, self._refresh().artifacts.get("dataset_hash")
        )
        engine_dir = Path(self.layout.engine)
        engine_dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            tmp = engine_dir / (name + ".partial")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(engine_dir / name)
        self.store.mark_stage_done(self.job_id, "render")

    def _acquire(self) -> None:
        if self.remote is not None:
            if "train" in self._refresh().stages_done:
                return
            self._stage("acquire")
            self.remote.acquire(force_budget=bool(self.job.artifacts.get("force_budget")))
            self.remote.upload(self._refresh().artifacts.get("dataset_hash"))
            self.store.mark_stage_done(self.job_id, "acquire")
            return
        if not self._stage("acquire"):
            return
        lease = {"provider": "local", "host": os.uname().nodename, "price_usd_h": 0.0}
        self.store.update(self.job_id, lease=lease)
        self.store.append_event(self.job_id, "host.acquired", lease)
        self.store.mark_stage_done(self.job_id, "acquire")

    def _publish(self) -> None:
        if not self.spec.publish.targets or not self._stage("publish"):
            return
        from loraflow.publish.publisher import publish_job

        try:
            publish_job(self.store, self._refresh())
        except Exception as exc:
            raise UserInputError(
                f"publishing failed: {type(exc).__name__}: {exc}",
                fix=f"fix the target, then `loraflow publish {self.job_id}`",
            ) from exc
        self.store.mark_stage_done(self.job_id, "publish")

    def _start_notifier(self):
        if not self.spec.notifications:
            return None
        from loraflow.notify.notifier import Notifier
        from loraflow.notify.webhooks import resume_point

        after = resume_point(self.store, self.job_id)  # a runner started again continues where the last one was
        return Notifier(self.store, self.job_id, self.spec.notifications, after_seq=after).start()

    def _package(self) -> None:
        if not self._stage("package"):
            return
        from loraflow.publish.bundle import build_bundle

        bundle = build_bundle(self.store, self._refresh())
        self.store.add_artifacts(self.job_id, bundle=str(bundle))
        self.store.mark_stage_done(self.job_id, "package")

    # --- training --------------------------------------------------------------------------------

    def _train(self) -> JobState | None:
        """Run or re-attach to training; None when it finished, else the state the job ended in."""
        if "train" in self._refresh().stages_done:
            return None
        self._stage("train")
        handoff_file(self.layout).unlink(missing_ok=True)  # we hold the lock: no follower has the job
        follow_path = follow_file(self.layout)
        state = FollowState.load(follow_path)
        while True:
            try:
                return self._train_on_host(state, follow_path)
            except HostUnreachable as exc:  # dead, outbid, unreachable or stalled: carry on elsewhere
                if self._stop_asked():  # stopping anyway: keep what can be copied, rent nothing new
                    assert self.remote is not None
                    with contextlib.suppress(LoraflowError):
                        self._record(self.remote.sync(patient=False), None)
                    return self._end_stop()
                lost = self._move_host(state, follow_path, exc.message)
                if lost is not None:
                    return lost

    def _check_host(self) -> None:
        """Raises HostUnreachable when the leased host can no longer train (no-op on this machine)."""
        reason = self.remote.dead_reason() if self.remote is not None else None
        if reason:
            raise HostUnreachable(reason)

    def _move_host(self, state: FollowState, follow_path: Path, reason: str) -> JobState | None:
        """The host died, was outbid or stalled: copy what we can, let it go, lease another, resume."""
        assert self.remote is not None
        self._emit("host.lost", {"reason": reason, "step": self._refresh().step})
        with contextlib.suppress(LoraflowError):  # gone: the checkpoints copied so far are what we have
            self._record(self.remote.sync(patient=False), None)
        self.remote.release(reason)
        self_follow_file(self.layout).unlink(missing_ok=True)  # a new host: the follower may try again
        state.host_losses += 1
        state.offset, state.processed = 0, True
        state.save(follow_path)
        if state.host_losses > self.spec.compute.max_retries:
            return self._fail(
                f"lost {state.host_losses} hosts ({reason})",
                "raise compute.max_retries or choose more reliable hosts (compute.gpu.min_reliability)",
                code="host_lost",
            )
        if self._stop_asked():
            return self._end_stop()
        self.store.transition(self.job_id, JobState.PROVISIONING, stage="acquire")
        self.remote.acquire(force_budget=bool(self._refresh().artifacts.get("force_budget")))
        self.remote.upload(self._refresh().artifacts.get("dataset_hash"))
        self.store.transition(self.job_id, JobState.TRAINING, stage="train")
        return None

    def _train_on_host(self, state: FollowState, follow_path: Path) -> JobState | None:
        host, xlayout = self.xhost, self.xlayout
        handle = Handle.in_folder(xlayout.run, "train")
        relaunched = False  # by the restart below: nothing to re-attach to
        while True:
            status, _ = host.status(handle)
            launched = state.processed
            if launched:
                if self._stop_asked():
                    return self._end_stop()
                self._launch(handle, state)
                state.save(follow_path)
            elif not relaunched:
                self._last_error = self._recorded_error()
                if status is ProcessStatus.RUNNING:
                    self.store.append_event(self.job_id, ev.LOG, {"message": "re-attached to the running trainer"})
                elif status is ProcessStatus.GONE:
                    self._check_host()
            fresh, relaunched = launched or relaunched, False
            if (fresh or status is ProcessStatus.RUNNING) and self._hand_off(state, follow_path):
                return JobState.TRAINING
            code, parser = self._follow(handle, state, follow_path, fresh)
            final_path = self.engine.final_lora(self.spec, xlayout)
            final = (host.size(final_path) is not None) if self.remote else Path(final_path).exists()
            outcome = self.engine.outcome(code, final, parser)
            if self.remote is not None:
                if outcome.ok:
                    self.remote.fetch(final_path, self.engine.final_lora(self.spec, self.layout))
                self._record(self.remote.sync(), None, final=True)
            state.processed = True
            state.save(follow_path)
            if outcome.ok:
                Path(self.layout.stop_request).unlink(missing_ok=True)
                self.budget_stop_file.unlink(missing_ok=True)
                self.store.add_artifacts(self.job_id, lora=self.engine.finish(self.spec, self.layout))
                self.store.mark_stage_done(self.job_id, "train")
                return None
            if outcome.stopped or self._stop_asked() or self.budget_stop_file.exists():
                return self._end_stop()
            if code is None:
                self._check_host()
            retryable = (self._last_error or {}).get("code") not in NOT_RETRYABLE
            if retryable and state.restarts < self.spec.monitor.max_restarts:
                state.restarts += 1
                state.save(follow_path)
                self.store.append_event(
                    self.job_id,
                    "restart",
                    {"reason": outcome.message, "attempt": state.restarts, "of": self.spec.monitor.max_restarts},
                )
                self._launch(handle, state)
                state.save(follow_path)
                relaunched = True
                continue
            err = self._last_error or {}
            return self._fail(err.get("message") or outcome.message, err.get("hint", ""), err.get("code", "failed"))

    def _launch(self, handle: Handle, state: FollowState) -> None:
        for action in self.engine.prepare_resume(self.spec, self.xlayout):
            self.store.append_event(self.job_id, ev.LOG, {"message": action})
        python = self.spec.compute.python if self.remote else "auto"
        cmd = self.engine.command(self.spec, self.xlayout, python)
        env = {**cmd.env, **{name: os.environ[name] for name in cmd.env_names if name in os.environ}}
        if self.remote is not None:
            env.update(self.remote.env())
        state.attempt += 1
        state.processed = False
        host = self.xhost
        if self.remote is not None:
            state.offset = host.size(handle.log_file) or 0
        else:
            state.offset = Path(handle.log_file).stat().st_size if Path(handle.log_file).exists() else 0
        self._last_error = None
        host.run(cmd.argv, cmd.cwd or self.xlayout.root, handle, env)
        host.wait_started(handle)
        self.store.append_event(self.job_id, "train.launched", {"attempt": state.attempt, "pid": host.pid(handle)})

    def _recorded_error(self) -> dict[str, Any] | None:
        """The current attempt's last engine error as stored (whoever read the log: us before a restart,
        or the follower), so the decision after its exit is the same."""
        last = self.store.events(self.job_id, types=[ev.ERROR, "train.launched"], latest=True)
        return last[0].data if last and last[0].type == ev.ERROR else None

    def _hand_off(self, state: FollowState, follow_path: Path) -> bool:
        """Give a running remote trainer to the worker's follower (see running/following.py)."""
        if not self.handoff or Path(self.layout.stop_request).exists() or stall_file(self.layout).exists():
            return False
        if self_follow_file(self.layout).exists():  # the follower could not follow this host
            return False
        if self._pending is not None:
            self._write(self._pending)
            self._pending = None
        state.save(follow_path)
        write_atomic(handoff_file(self.layout), json.dumps({"attempt": state.attempt, "at": time.time()}))
        self._emit(ev.LOG, {"message": "training runs; the worker's follower follows it"})
        return True

    def _handed_back_stall(self) -> Stall | None:
        """A stall the follower saw and left for us to act on."""
        path = stall_file(self.layout)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        finally:
            path.unlink(missing_ok=True)
        return Stall(str(data.get("reason", "no_progress")), str(data.get("message", "stalled")))

    def _account(self, state: FollowState, follow_path: Path) -> None:
        """Once a second, not on every log poll: it reads the job record."""
        now = time.monotonic()
        if now - self._accounted < 1:
            return
        self._accounted = now
        before = state.budget_warned
        for type_, data, fields in self.meter.check(self._refresh(), state):
            self.store.append_event(self.job_id, type_, data, **fields)
        if state.budget_warned != before:
            state.save(follow_path)

    def _follow(
        self, handle: Handle, state: FollowState, follow_path: Path, fresh: bool = False
    ) -> tuple[int | None, Any]:
        parser = self.engine.parser(self.spec)
        on_stall = self.spec.monitor.on_stall
        # A trainer found running has printed already; a fresh one is not signalled before it listens.
        watch = Watchdog(self.spec, self.layout, time.monotonic(), heard=not fresh)
        host = self.xhost
        stall_kill = False
        collected = 0.0
        handed_stall = self._handed_back_stall()
        while True:
            chunk = host.read(handle.log_file, state.offset)
            if chunk:
                state.offset += len(chunk)
                events = parser.feed(chunk)
                self._record(events, watch)
                # New engine outputs: after a save line, and every few seconds (samples print no line).
                if any(e.type in (ev.CHECKPOINT, ev.SAMPLE) for e in events) or time.monotonic() - collected > 5:
                    collected = time.monotonic()
                    self._collect(watch)
                state.save(follow_path)
            status, code = host.status(handle)
            if status is not ProcessStatus.RUNNING:
                rest = host.read(handle.log_file, state.offset)
                state.offset += len(rest)
                self._record([*parser.feed(rest), *parser.flush()], watch, final=True)
                if self.remote is None:
                    self._record(self.engine.collect(self.spec, self.layout), watch, final=True)
                state.save(follow_path)
                if status is ProcessStatus.GONE:
                    self._check_host()
                return (None if stall_kill else code), parser
            now = time.monotonic()
            if self.remote is not None:
                self._account(state, follow_path)
            if watch.stop_due(now):
                watch.stop_sent = host.signal(handle, signal.SIGTERM)
                self.store.append_event(self.job_id, ev.LOG, {"message": "stop requested: checkpointing"})
            if watch.gpu_due(now):
                watch.on_gpu(host.gpu_stats(), now)
            stall = handed_stall or watch.stall(now)
            if stall and not stall_kill and handed_stall is None:  # (the follower recorded its own)
                type_, data, _ = watch.stall_event(stall)
                self.store.append_event(self.job_id, type_, data)
            handed_stall = None
            if stall and not stall_kill:
                if on_stall == "notify":
                    watch.told(now)
                elif on_stall == "restart" and self.remote is not None:
                    # A stalled rented host is not worth more money: move to a new one.
                    host.signal(handle, signal.SIGKILL)
                    raise HostUnreachable(f"stalled: {stall.message}")
                else:
                    stall_kill = True
                    self._last_error = (
                        None
                        if on_stall == "restart"
                        else {
                            "code": "stalled",
                            "message": stall.message,
                            "hint": "raise monitor.stall_minutes if the engine is legitimately slow",
                        }
                    )
                    host.signal(handle, signal.SIGKILL)
            if now - self._last_heartbeat > 5:
                self._last_heartbeat = now
                from datetime import datetime

                self.store.update(self.job_id, heartbeat_at=datetime.now(UTC))
            with self._interruptible_part():  # every round's state is saved: a safe place to leave
                time.sleep(self.poll_s)

    def _collect(self, watch: Watchdog | None) -> None:
        if self.remote is not None:
            self._record(self.remote.sync(), watch)
        else:
            self._record(self.engine.collect(self.spec, self.layout), watch)

    def _record(self, events: list[EngineEvent], watch: Watchdog | None, final: bool = False) -> None:
        """Store engine events; progress is thrown away only when a newer one follows within 0.5 s."""
        now = time.monotonic()
        for event in events:
            if watch is not None:
                watch.saw([event], now)
            if event.type in THROTTLED:
                if now - self._last_write < 0.5 and event.data.get("step") != event.data.get("total"):
                    self._pending = event
                    continue
                self._pending = None
                self._last_write = now
                self._write(event)
                continue
            if self._pending is not None:  # keep the step of a checkpoint or stop exact
                self._write(self._pending)
                self._pending = None
            if event.type == ev.ERROR:
                self._last_error = event.data
            self._write(event)
        if final and self._pending is not None:
            self._write(self._pending)
            self._pending = None

    def _write(self, event: EngineEvent) -> None:
        self.store.append_event(self.job_id, event.type, event.data, **event_fields(event))
        warning = self.wandb.feed(event)
        if warning:
            self.store.append_event(self.job_id, ev.WARNING, {"message": warning})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loraflow.running.runner JOB_ID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    runner = JobRunner(Store(), args[0])
    signal.signal(signal.SIGTERM, runner.on_terminate)
    state = runner.run()
    return 0 if state in (JobState.COMPLETED, JobState.AWAITING_APPROVAL, JobState.STOPPED, JobState.TRAINING) else 1


if __name__ == "__main__":
    sys.exit(main())
