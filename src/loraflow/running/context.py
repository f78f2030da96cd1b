"""What every stage of a job's runner is handed: the job, its spec and engine, where it trains (a place),
and one writer for its events; plus the few exceptions by which a stage tells the supervisor how the
job ends (a stop, a failure, the runner asked to leave).

A stage is a small unit with the same verbs (`Stage`): the supervisor (running/runner.py) asks `done`,
records the stage as started, runs it between stop points, and marks it done when `run` returns None.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loraflow.engines import get_engine
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Job, Store
from loraflow.layout import JobLayout
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.running.following import budget_stop_file, event_fields
from loraflow.spec import TrainSpec

if TYPE_CHECKING:
    from loraflow.notify.wandb_sink import WandbSink
    from loraflow.running.place import Place

THROTTLED = {ev.PROGRESS, "caching"}


class StopAsked(Exception):
    """A stop, cancel or budget stop: the job ends there, through the supervisor's one end of a stop."""


class JobFailed(Exception):
    """A stage decided the job cannot go on: the supervisor lets the host go and fails the job."""

    def __init__(self, message: str, hint: str = "", code: str = "failed") -> None:
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


class Terminated(BaseException):
    """SIGTERM to the runner (a shutdown, `kill`): it leaves the job as it is, resumable, and exits.
    A BaseException so that no `except Exception` turns it into a job failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Stage(Protocol):
    """One step of a job. `state` is where the job moves before the stage runs; `stop_point` says whether a
    stop request is honoured just before it; `needs_place` is False once the trainer's host is of no use
    (it is let go first); `interruptible` says a SIGTERM may end the stage anywhere (it checks what is done
    when it runs again)."""

    name: str
    state: JobState
    stop_point: bool
    needs_place: bool
    interruptible: bool

    def done(self, ctx: RunContext) -> bool: ...

    def run(self, ctx: RunContext) -> JobState | None:
        """None when the stage finished (the supervisor marks it done), else the state the job stays in."""
        ...


class Recorder:
    """Engine events into the job's log (and W&B): a progress line is thrown away only when a newer one
    follows within 0.5 s, and the one held back is written before anything that needs its exact step."""

    def __init__(self, store: Store, job_id: str, wandb: WandbSink) -> None:
        self.store = store
        self.job_id = job_id
        self.wandb = wandb
        self.last_error: dict[str, Any] | None = None  # the current attempt's last engine error
        self._pending: EngineEvent | None = None
        self._last_write = 0.0

    def record(self, events: list[EngineEvent], final: bool = False) -> None:
        now = time.monotonic()
        for event in events:
            if event.type in THROTTLED:
                if now - self._last_write < 0.5 and event.data.get("step") != event.data.get("total"):
                    self._pending = event
                    continue
                self._pending = None
                self._last_write = now
                self._write(event)
                continue
            self.flush()  # keep the step of a checkpoint or stop exact
            if event.type == ev.ERROR:
                self.last_error = event.data
            self._write(event)
        if final:
            self.flush()

    def flush(self) -> None:
        """Write the progress line held back (its log offset is already consumed)."""
        if self._pending is not None:
            self._write(self._pending)
            self._pending = None

    def _write(self, event: EngineEvent) -> None:
        self.store.append_event(self.job_id, event.type, event.data, **event_fields(event))
        warning = self.wandb.feed(event)
        if warning:
            self.store.append_event(self.job_id, ev.WARNING, {"message": warning})


class RunContext:
    """The job one runner works on, shared by its stages."""

    def __init__(
        self,
        store: Store,
        job_id: str,
        spec: TrainSpec,
        layout: JobLayout,
        place: Place,
        wandb: WandbSink,
        poll_s: float,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.spec = spec
        self.engine = get_engine(spec.engine.name)
        self.layout = layout  # this machine's copy of the job
        self.place = place
        self.wandb = wandb
        self.poll_s = poll_s
        self.recorder = Recorder(store, job_id, wandb)
        self.job = store.get(job_id)
        self._terminated: int | None = None  # the signal that asked this runner to leave
        self._interruptible = False  # inside an idempotent stage or the follow loop's wait

    def refresh(self) -> Job:
        self.job = self.store.get(self.job_id)
        return self.job

    def emit(self, type_: str, data: dict[str, Any]) -> None:
        self.store.append_event(self.job_id, type_, data)

    def stop_asked(self) -> bool:
        return Path(self.layout.stop_request).exists()

    @property
    def budget_stop_file(self) -> Path:
        return budget_stop_file(self.layout)

    # --- leaving on SIGTERM ----------------------------------------------------------------------

    def on_terminate(self, signum: int) -> None:
        """Leave at once where that is safe, else at the next check."""
        self._terminated = signum
        if self._interruptible:
            self._interruptible = False
            raise Terminated(signum)

    def leave_if_asked(self) -> None:
        if self._terminated is not None:
            raise Terminated(self._terminated)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A part that may stop anywhere (each stage checks what is done); elsewhere, for instance between
        launching the trainer and recording it, a SIGTERM waits for the next check."""
        self.leave_if_asked()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False
