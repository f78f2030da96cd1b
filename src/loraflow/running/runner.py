"""The job runner: one detached process per job that moves it through its stages and follows training.

Every stage checks what is already done and records its outcome before the next starts, so a runner
killed at any point is simply started again: it re-attaches to a training process that is still
running (from its pid, log offset and exit-code files) instead of starting a second one.

`JobRunner` is the supervisor: it runs the stages (running/stages.py, running/training.py) in order,
honours stop points between them, and ends every stop, cancel and budget stop through one path. Where
the trainer runs is the job's place (running/place.py), handed to every stage.

    python -m loraflow.running.runner JOB_ID
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from loraflow import paths
from loraflow.engines import get_engine
from loraflow.engines.installed import require_engine
from loraflow.errors import LoraflowError, UserInputError
from loraflow.jobs.outage import StoreUnavailable
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Job, Store
from loraflow.layout import JobLayout
from loraflow.monitor import events as ev
from loraflow.running.context import JobFailed, RunContext, Stage, StopAsked, Terminated
from loraflow.running.control import runner_lock
from loraflow.running.place import place_for
from loraflow.running.result_check import ResultCheck
from loraflow.running.stages import Acquire, Package, Prepare, Publish, Render
from loraflow.running.training import Train
from loraflow.spec import TrainSpec

__all__ = ["JobRunner", "StopAsked", "Terminated", "disk_full", "main"]

ORDER = [JobState.PENDING, JobState.PREPARING, JobState.PROVISIONING, JobState.TRAINING, JobState.FINISHING]


def disk_full(exc: BaseException) -> bool:
    """ENOSPC from a file write, or SQLite saying the same about the job store."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "database or disk is full" in str(exc) or "No space left on device" in str(exc)


class JobRunner:
    """The supervisor of one job: its stages in order, a stop honoured between them, one end for stops."""

    def __init__(self, store: Store, job_id: str, poll_s: float = 0.25) -> None:
        from loraflow.notify.wandb_sink import WandbSink

        self.store = store
        self.job_id = job_id
        self.dir = paths.job_dir(job_id)
        self.layout = JobLayout(str(self.dir))
        self.spec: TrainSpec = store.get(job_id).train_spec
        self.wandb = WandbSink(self.spec, job_id, self.dir)
        place = place_for(store, job_id, self.spec, self.layout, get_engine(self.spec.engine.name), self._emit)
        self.ctx = RunContext(store, job_id, self.spec, self.layout, place, self.wandb, poll_s)
        self.place = place
        # Set by a worker that has a follower: once training runs, the follower follows it, not us.
        # (W&B's SDK keeps one run per process, so a job logging to it is followed by its own runner.)
        handoff = os.environ.get("LORAFLOW_HANDOFF") == "1" and place.can_hand_off and not self.spec.wandb.enabled
        self.stages: list[Stage] = [Prepare(), Render(), Acquire(), Train(handoff), ResultCheck(), Package()]

    def on_terminate(self, signum: int, _frame: Any) -> None:
        """SIGTERM handler (installed by main): leave at once where that is safe, else at the next check."""
        self.ctx.on_terminate(signum)

    def _emit(self, type_: str, data: dict[str, Any]) -> None:
        self.store.append_event(self.job_id, type_, data)

    # --- state helpers ---------------------------------------------------------------------------

    def _refresh(self) -> Job:
        return self.ctx.refresh()

    def _advance(self, target: JobState) -> None:
        """Move forward through ORDER to target (never backwards)."""
        current = self._refresh().state
        while current in ORDER and ORDER.index(current) < ORDER.index(target):
            current = ORDER[ORDER.index(current) + 1]
            self.store.transition(self.job_id, current)

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
            store_away = False
            try:
                with self.place.keeps_lease():  # feeds a rented host's watcher
                    return self._run()
            except Terminated as exc:
                return self._left(exc.signum)
            except StoreUnavailable as exc:  # past the bound: leave the job as it is for the next runner
                store_away = True
                with contextlib.suppress(OSError):
                    print(f"runner of {self.job_id}: {exc.render()}", file=sys.stderr)
                return self.ctx.job.state
            except JobFailed as exc:
                return self._fail(exc.message, exc.hint, exc.code)
            except UserInputError as exc:
                return self._fail(exc.message, exc.fix or "", code=getattr(exc, "code", "bad_input"))
            except LoraflowError as exc:
                if disk_full(exc) or (exc.__cause__ is not None and disk_full(exc.__cause__)):
                    return self._fail_disk_full(exc)
                return self._fail(exc.render())
            except Exception as exc:  # never leave a job "active" with nobody working on it
                import traceback

                with contextlib.suppress(OSError):  # the log may be on a full disk: record the failure anyway
                    traceback.print_exc()
                if disk_full(exc):
                    return self._fail_disk_full(exc)
                return self._fail(f"{type(exc).__name__}: {exc}", code="internal")
            finally:
                if not store_away:
                    self._release_if_idle()
                if notifier is not None:
                    notifier.stop(flush_timeout_s=0 if store_away else 30)
                self.wandb.close()

    def _left(self, signum: int) -> JobState:
        """The runner was asked to go: the trainer (detached) keeps training, the state stays as it is,
        and the heartbeat is cleared so the worker or `loraflow jobs list` starts a runner again at once."""
        self.ctx.recorder.flush()  # a throttled progress line: its offset is already consumed
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
        """Record `disk_full` at once, even when the store is on the full disk: the store's reserve
        (jobs/integrity.py) is given back for this write; if even that does not fit, the failure is kept
        here and written as soon as there is room, within the store's outage bound, never a crash."""
        from loraflow.hints import match_hint
        from loraflow.jobs.integrity import give_back_reserve
        from loraflow.jobs.outage import outage_bound

        hint = match_hint("No space left on device")
        assert hint is not None
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        message = f"the disk is full{where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        give_back_reserve(self.store.url)
        deadline, wait = time.monotonic() + max(self.store.ride_out_s, outage_bound()), 0.2
        while True:
            try:
                return self._fail(message, hint.hint, code="disk_full")
            except Exception as again:
                if not disk_full(again) or time.monotonic() > deadline:
                    raise
                with contextlib.suppress(OSError):  # our own log is on the full disk too
                    print(f"runner of {self.job_id}: {message}; waiting for room to record it", file=sys.stderr)
                time.sleep(wait)
                wait = min(wait * 2, 5.0)

    def _release_if_idle(self) -> None:
        """A rented host is let go as soon as the job stops needing it, whatever the reason."""
        job = self._refresh()
        if job.state not in ORDER or "train" in job.stages_done:
            self._release_now(f"job {job.state.value}")

    def _release_now(self, reason: str) -> None:
        """Before a job is shown as ended, its rented host is gone (and its cost final)."""
        try:
            self.place.release(reason)
        except Exception as exc:  # reported, and `loraflow reap` finds it by label
            self._emit(ev.ERROR, {"code": "release_failed", "message": str(exc), "hint": "run `loraflow reap`"})

    # --- the supervisor --------------------------------------------------------------------------

    def _run(self) -> JobState:
        state = self._refresh().state
        if state not in ORDER:
            return state
        if "train" not in self.ctx.job.stages_done:
            require_engine(self.spec)  # before any stage: fails the job with engine_missing and the fix
        try:
            for stage in self.stages:
                ended = self._step(stage)
                if ended is not None:
                    return ended
        except StopAsked:
            return self._end_stop()
        if self.spec.publish.approval_required:  # a person approves before anything is published
            self.store.transition(self.job_id, JobState.AWAITING_APPROVAL)
            return JobState.AWAITING_APPROVAL
        self._step(Publish())
        self.store.transition(self.job_id, JobState.COMPLETED, stage=None)
        self.store.append_event(self.job_id, "job.completed", {"bundle": self._refresh().outputs.bundle})
        return JobState.COMPLETED

    def _step(self, stage: Stage) -> JobState | None:
        """One stage: its stop point, the job's state, and the stage run unless it is done; None when the
        job goes on, else the state it stays in."""
        if stage.stop_point:
            self._stop_point()
        if not stage.needs_place:
            self._release_if_idle()
        self._advance(stage.state)
        ctx = self.ctx
        if stage.done(ctx):
            return None
        if stage.name not in ctx.job.stages_done:
            self.store.append_event(self.job_id, "stage.started", {"stage": stage.name}, stage=stage.name)
            self.store.update(self.job_id, stage=stage.name)
        with ctx.interruptible() if stage.interruptible else contextlib.nullcontext():
            ended = stage.run(ctx)
        if ended is None:
            self.store.mark_stage_done(self.job_id, stage.name)
        return ended

    # --- stop, cancel and budget stop: one end -----------------------------------------------------

    def _stop_point(self) -> None:
        """Checked between stages: after a stop or cancel nothing more is rendered, rented or launched.
        Once the job is training, the train stage ends the stop (after the trainer saved and its
        checkpoints were copied off the host), so a runner taking a stopped job back goes there."""
        if self._refresh().state is JobState.TRAINING:
            return
        if self.ctx.stop_asked():
            raise StopAsked

    def _end_stop(self) -> JobState:
        """The one end of a user's stop, a cancel and the budget cap. The trainer has exited (it saves a
        checkpoint on SIGTERM) and its checkpoints were copied here before this runs, so the newest one
        is on the user's side before the host is let go; when there is none the event says why."""
        ctx = self.ctx
        budget = ctx.budget_stop_file.exists() and self._refresh().state in (JobState.PROVISIONING, JobState.TRAINING)
        Path(self.layout.stop_request).unlink(missing_ok=True)
        ctx.budget_stop_file.unlink(missing_ok=True)
        if self.place.ready(self._refresh()):
            try:  # whatever the trainer saved last is copied before the host is let go
                ctx.recorder.record(self.place.sync(), final=True)
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

    def _start_notifier(self) -> Any:
        if not self.spec.notifications:
            return None
        from loraflow.notify.notifier import Notifier

        # The outbox (notify/outbox.py) remembers what was queued and delivered: a runner started again
        # continues where the last one was, and what it leaves undelivered a worker delivers later.
        return Notifier(self.store, self.job_id, self.spec.notifications).start()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loraflow.running.runner JOB_ID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from loraflow.jobs.outage import outage_bound

    runner = JobRunner(Store(ride_out_s=outage_bound()), args[0])  # a store away a while is waited out
    signal.signal(signal.SIGTERM, runner.on_terminate)
    state = runner.run()
    return 0 if state in (JobState.COMPLETED, JobState.AWAITING_APPROVAL, JobState.STOPPED, JobState.TRAINING) else 1


if __name__ == "__main__":
    sys.exit(main())
