"""What the job runner and the async follower share while a trainer runs: the persisted follow state,
what a round of following a trainer means (`TrainerFollow`: its parser, watchdog and copy-back timing),
the cost meter, and the hand-off files between them.

A runner (one process per job) launches the trainer; in a worker it then hands the job to the worker's
follower (one event loop for every job) by writing `run/handoff.json` and exiting. The follower holds
the job's runner lock while it follows, and hands the job back (removes the file, starts the runner)
when something needs deciding: the trainer ended, the host stopped answering, or it stalled
(`run/stall.json` says which, so the runner acts on it exactly as if it had seen it itself).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loraflow.jobs.costs import job_cost
from loraflow.jobs.store import Job
from loraflow.layout import JobLayout
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.monitor.stall import Stall, StallDetector
from loraflow.spec import TrainSpec

Pending = tuple[str, dict[str, Any], dict[str, Any]]  # (event type, data, job fields) to append


@dataclass
class FollowState:
    """What the follower has consumed, persisted so a new runner continues where the old one was."""

    offset: int = 0
    attempt: int = 0
    processed: bool = True  # the current attempt's exit has been acted on
    restarts: int = 0
    host_losses: int = 0  # hosts that died, were outbid or stalled under this job
    budget_warned: bool = False
    # The trainer's phase as of `offset`: its phase line lies behind the offset, so a runner or follower that
    # re-attaches starts judging stalls from here instead of waiting for a line that never comes again.
    phase: str = "starting"

    @classmethod
    def load(cls, path: Path) -> FollowState:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self)))


def on_new_host(layout: JobLayout) -> None:
    """A runner that found its job's host gone and leased another: nothing of the old trainer's log is
    left to read and nothing to re-attach to, so the next attempt is a fresh launch (from the newest
    checkpoint), not a 'restart' counted against `monitor.max_restarts`."""
    path = follow_file(layout)
    state = FollowState.load(path)
    state.offset, state.processed, state.phase = 0, True, "starting"
    state.save(path)


def write_atomic(path: Path, text: str) -> None:
    """Readers in another process see the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def follow_file(layout: JobLayout) -> Path:
    return Path(layout.run) / "follow.json"


def stall_file(layout: JobLayout) -> Path:
    return Path(layout.run) / "stall.json"


def self_follow_file(layout: JobLayout) -> Path:
    """Written when the follower could not follow this host: the runner follows it itself instead of
    handing it off again (no hand-off ping-pong with nobody reading the log)."""
    return Path(layout.run) / "self-follow"


def budget_stop_file(layout: JobLayout) -> Path:
    return Path(layout.run) / "budget-stop"


def event_fields(event: EngineEvent) -> dict[str, Any]:
    """The job-row columns an engine event updates in the same transaction (progress, step)."""
    if event.type == ev.PROGRESS:
        return {
            "step": int(event.data["step"]),
            "total_steps": int(event.data["total"]),
            "loss": event.data.get("loss"),
        }
    if event.type in (ev.RESUMED, ev.STOPPED, ev.RESULT):
        return {"step": int(event.data["step"])}
    if event.type == ev.COST and event.data.get("priced_per"):  # a hosted engine's price for the run
        return {"cost_usd": float(event.data["usd"])}
    return {}


def coalesce(events: list[EngineEvent]) -> list[EngineEvent]:
    """Drop progress lines that a newer progress line follows directly: the step before a checkpoint,
    a stop or an error stays exact, and the last one is always kept."""
    out: list[EngineEvent] = []
    for event in events:
        if out and event.type == ev.PROGRESS and out[-1].type == ev.PROGRESS:
            out[-1] = event
        else:
            out.append(event)
    return out


GPU_EVERY_S = 30.0
# A stop is signalled once the trainer has printed something (the builtin trainer prints its first line
# after it listens for SIGTERM) or after this long: a SIGTERM before then would kill it with no checkpoint.
STOP_GRACE_S = 20.0


class Watchdog:
    """The per-round judgement the runner and the follower share: the stall detector fed from the
    engine's events and from GPU utilisation (asked every GPU_EVERY_S), and the user's stop request,
    sent to the trainer once."""

    def __init__(
        self,
        spec: TrainSpec,
        layout: JobLayout,
        now: float,
        gpu_offset_s: float = GPU_EVERY_S,
        heard: bool = False,
        phase: str = "starting",
    ) -> None:
        monitor = spec.monitor
        self.detector = StallDetector(monitor.stall_minutes, monitor.gpu_idle_minutes, now)
        self.detector.on_phase(phase, now)
        self.on_stall = monitor.on_stall
        self.layout = layout
        self.stop_sent = False
        self.heard = heard  # the trainer has printed: it is past its start-up and listens for SIGTERM
        self._began = now
        self._last_gpu = now - gpu_offset_s  # the first question comes after GPU_EVERY_S - offset

    def saw(self, events: list[EngineEvent], now: float) -> None:
        self.heard = self.heard or bool(events)
        for event in events:
            if event.type == ev.PHASE:
                self.detector.on_phase(event.data.get("phase", ""), now)
            elif event.type in (ev.PROGRESS, ev.CHECKPOINT, ev.SAMPLE):
                self.detector.on_progress(now)
            elif event.type in (ev.RESULT, ev.STOPPED):
                self.detector.on_result(now)

    def stop_due(self, now: float | None = None) -> bool:
        if self.stop_sent or not Path(self.layout.stop_request).exists():
            return False
        return self.heard or (now if now is not None else time.monotonic()) - self._began > STOP_GRACE_S

    def gpu_due(self, now: float) -> bool:
        if now - self._last_gpu <= GPU_EVERY_S:
            return False
        self._last_gpu = now
        return True

    def on_gpu(self, stats: list[dict[str, Any]] | None, now: float) -> None:
        self.detector.on_gpu([g["util"] for g in stats] if stats else None, now)

    def stall(self, now: float) -> Stall | None:
        return self.detector.check(now)

    def stall_event(self, stall: Stall) -> Pending:
        action = "end" if stall.reason == "no_exit" else self.on_stall  # a finished trainer is only ended
        return ("stall.detected", {"reason": stall.reason, "message": stall.message, "action": action}, {})

    def told(self, now: float) -> None:
        """A stall only notified: tell again after another full stall window, not every round."""
        self.detector.on_progress(now)


class CostMeter:
    """Cost from the lease's real price: shown live, warned at the warn fraction, stopped at the cap.

    The caller passes a fresh job record (the runner reads its own; the follower reads all of its jobs
    in one query) and writes the events it returns; reaching the cap asks the trainer to stop with a
    checkpoint through the same stop-request file a user's stop uses.
    """

    def __init__(self, spec: TrainSpec, layout: JobLayout) -> None:
        self.spec = spec
        self.layout = layout
        self._last_cost = (0.0, 0.0)  # (time, usd) of the last cost event

    def check(self, job: Job, state: FollowState) -> list[Pending]:
        now = time.monotonic()
        out: list[Pending] = []
        cost = job_cost(job.outputs.leases, job.lease)
        if abs(cost - self._last_cost[1]) >= 0.0001 and now - self._last_cost[0] > 2:
            self._last_cost = (now, cost)
            rate = float((job.lease or {}).get("price_usd_h") or 0)
            out.append((ev.COST, {"usd": round(cost, 5), "rate_usd_h": rate}, {"cost_usd": cost}))
        budget = self.spec.budget
        hours = sum(
            float(x.get("ended_at", 0)) - float(x.get("started_at", 0)) for x in job.outputs.leases
        ) / 3600 + ((time.time() - float(job.lease["started_at"])) / 3600 if job.lease else 0)
        cap_hit = (budget.max_usd is not None and cost >= budget.max_usd) or (
            budget.max_hours is not None and hours >= budget.max_hours
        )
        if budget.max_usd and not state.budget_warned and cost >= budget.max_usd * budget.warn_fraction:
            state.budget_warned = True
            out.append(("budget.warning", {"usd": round(cost, 4), "max_usd": budget.max_usd}, {}))
        stop = budget_stop_file(self.layout)
        if cap_hit and not stop.exists():
            stop.touch()
            Path(self.layout.stop_request).touch()
            out.append((ev.LOG, {"message": f"budget reached (${cost:.4f}): stopping with a checkpoint"}, {}))
        return out


class TrainerFollow:
    """Following one trainer's log, round by round: what its new bytes say (the engine's parser), whether
    it is time to signal a stop, ask the GPU or copy new outputs back, and whether it stalled. No I/O:
    the runner (a blocking host, one job) and the worker's follower (asyncio, many jobs) read, signal
    and write each in their own way, and both ask this what a round means."""

    def __init__(
        self,
        spec: TrainSpec,
        layout: JobLayout,
        parser: Any,
        now: float,
        collect_every_s: float,
        collected_at: float | None = None,
        gpu_offset_s: float = GPU_EVERY_S,
        heard: bool = False,
        phase: str = "starting",
    ) -> None:
        """`phase`: what FollowState recorded for a trainer followed before (a re-attach)."""
        self.parser = parser
        self.watch = Watchdog(spec, layout, now, gpu_offset_s=gpu_offset_s, heard=heard, phase=phase)
        self.collect_every_s = collect_every_s
        self._collected = now if collected_at is None else collected_at

    def feed(self, chunk: bytes, ended: bool, now: float) -> list[EngineEvent]:
        """The events in a round's new bytes; once the trainer ended, whatever its parser still held."""
        events: list[EngineEvent] = self.parser.feed(chunk) if chunk else []
        if ended:
            events += self.parser.flush()
        self.watch.saw(events, now)
        return events

    @property
    def phase(self) -> str:
        """The trainer's phase as of the bytes fed so far: kept in FollowState with the offset."""
        return self.watch.detector.phase

    def collect_due(self, events: list[EngineEvent], now: float) -> bool:
        """New engine outputs to copy: after a save line, and every so often (samples print no line)."""
        if any(e.type in (ev.CHECKPOINT, ev.SAMPLE) for e in events) or now - self._collected > self.collect_every_s:
            self._collected = now
            return True
        return False

    def stop_due(self, now: float) -> bool:
        return self.watch.stop_due(now)

    def stop_sent(self, sent: bool) -> None:
        self.watch.stop_sent = sent

    def gpu_due(self, now: float) -> bool:
        return self.watch.gpu_due(now)

    def on_gpu(self, stats: list[dict[str, Any]] | None, now: float) -> None:
        self.watch.on_gpu(stats, now)

    def stall(self, now: float) -> Stall | None:
        """A stall to act on (a stall only notified is told again after another full window)."""
        stall = self.watch.stall(now)
        if stall is not None and self.watch.on_stall == "notify":
            self.watch.told(now)
        return stall

    def stall_event(self, stall: Stall) -> Pending:
        return self.watch.stall_event(stall)
