"""The train stage: launch the trainer where the job's place is (or re-attach to it), follow its log,
and decide at its exit: done, restart from the last checkpoint, move to a new host, fail, or stop.

What a round of following means is shared with the worker's follower (`TrainerFollow` in
running/following.py); in a worker, a remote trainer is handed to that follower once it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loraflow.engines.base import final_files
from loraflow.errors import LoraflowError
from loraflow.hosts.base import Handle, ProcessStatus
from loraflow.hosts.ssh import HostUnreachable
from loraflow.jobs.states import JobState
from loraflow.layout import handoff_file
from loraflow.monitor import events as ev
from loraflow.monitor.stall import Stall
from loraflow.running.context import JobFailed, RunContext, StopAsked
from loraflow.running.following import (
    CostMeter,
    FollowState,
    TrainerFollow,
    follow_file,
    self_follow_file,
    stall_file,
    write_atomic,
)

# Failures a restart cannot fix (or that the stall policy says to fail on).
NOT_RETRYABLE = {"oom", "hf_gated", "hf_auth", "bad_input", "bad_model", "missing_file", "disk_full", "stalled",
                 "nan_loss", "fal_auth", "fal_failed"}
COLLECT_EVERY_S = 5.0


class Train:
    name = "train"
    state = JobState.TRAINING
    stop_point = True
    needs_place = True
    interruptible = False  # it follows for hours: SIGTERM is taken where its rounds are saved
    ctx: RunContext  # set by run
    meter: CostMeter
    follow_path: Path

    def __init__(self, handoff: bool) -> None:
        self.handoff = handoff  # a worker's follower follows the trainer once it runs
        self._accounted = 0.0
        self._last_heartbeat = 0.0

    def done(self, ctx: RunContext) -> bool:
        return self.name in ctx.job.stages_done

    def run(self, ctx: RunContext) -> JobState | None:
        """Run or re-attach to training; None when it finished, TRAINING when handed to the follower."""
        self.ctx = ctx
        self.meter = CostMeter(ctx.spec, ctx.layout)
        self.follow_path = follow_file(ctx.layout)
        handoff_file(ctx.layout).unlink(missing_ok=True)  # we hold the lock: no follower has the job
        state = FollowState.load(self.follow_path)
        while True:
            try:
                return self._attempts(state)
            except HostUnreachable as exc:  # dead, outbid, unreachable or stalled: carry on elsewhere
                if ctx.stop_asked():  # stopping anyway: keep what can be copied, rent nothing new
                    with contextlib.suppress(LoraflowError):
                        ctx.recorder.record(ctx.place.sync(patient=False))
                    raise StopAsked from exc
                self._move_host(state, exc.message)

    def _move_host(self, state: FollowState, reason: str) -> None:
        """The host died, was outbid or stalled: copy what we can, let it go, lease another, resume."""
        ctx = self.ctx
        ctx.emit("host.lost", {"reason": reason, "step": ctx.refresh().step})
        with contextlib.suppress(LoraflowError):  # gone: the checkpoints copied so far are what we have
            ctx.recorder.record(ctx.place.sync(patient=False))
        ctx.place.release(reason)
        self_follow_file(ctx.layout).unlink(missing_ok=True)  # a new host: the follower may try again
        state.host_losses += 1
        state.offset, state.processed = 0, True
        state.save(self.follow_path)
        if state.host_losses > ctx.spec.compute.max_retries:
            raise JobFailed(
                f"lost {state.host_losses} hosts ({reason})",
                "raise compute.max_retries or choose more reliable hosts (compute.gpu.min_reliability)",
                code="host_lost",
            )
        if ctx.stop_asked():
            raise StopAsked
        ctx.store.transition(ctx.job_id, JobState.PROVISIONING, stage="acquire")
        outputs = ctx.refresh().outputs
        ctx.place.acquire(outputs.force_budget, outputs.dataset_hash)
        ctx.store.transition(ctx.job_id, JobState.TRAINING, stage="train")

    def _attempts(self, state: FollowState) -> JobState | None:
        """Launch or re-attach, follow, and decide at each exit until one is final."""
        ctx = self.ctx
        host, xlayout = ctx.place.host(), ctx.place.layout()
        handle = Handle.in_folder(xlayout.run, "train")
        relaunched = False  # by the restart below: nothing to re-attach to
        while True:
            status, _ = host.status(handle)
            launched = state.processed
            if launched:
                if ctx.stop_asked():
                    raise StopAsked
                self._launch(handle, state)
                state.save(self.follow_path)
            elif not relaunched:
                ctx.recorder.last_error = self._recorded_error()
                self._record_launch(handle, state)
                if status is ProcessStatus.RUNNING:
                    ctx.store.append_event(ctx.job_id, ev.LOG, {"message": "re-attached to the running trainer"})
                elif status is ProcessStatus.GONE:
                    ctx.place.check()
            fresh, relaunched = launched or relaunched, False
            if (fresh or status is ProcessStatus.RUNNING) and self._hand_off(state):
                return JobState.TRAINING
            code, parser = self._follow(handle, state, fresh)
            finals = self._finals()
            outcome = ctx.engine.outcome(code, ctx.place.has(finals[0][0]), parser)
            ctx.recorder.record(ctx.place.bring_back(finals, outcome.ok), final=True)
            state.processed = True
            state.save(self.follow_path)
            if outcome.ok:
                Path(ctx.layout.stop_request).unlink(missing_ok=True)
                ctx.budget_stop_file.unlink(missing_ok=True)
                ctx.store.update_outputs(ctx.job_id, lora=ctx.engine.finish(ctx.spec, ctx.layout))
                return None
            if ctx.stop_asked() or ctx.budget_stop_file.exists():
                raise StopAsked
            if outcome.stopped:  # nobody here asked: a pause, or the host's dead-man switch while we were away
                fired = ctx.place.watch_fired()
                if fired:  # the host is destroying itself: carry on elsewhere, never end as a user's stop
                    raise HostUnreachable(f"the host's dead-man switch fired ({fired})")
                raise StopAsked
            if outcome.more:  # one run of several done (Wan 2.2's high-noise expert): the next starts at once
                ctx.store.append_event(ctx.job_id, ev.LOG, {"message": outcome.message})
                self._launch(handle, state)
                state.save(self.follow_path)
                relaunched = True
                continue
            if code is None:
                ctx.place.check()
            err = ctx.recorder.last_error or {}
            if err.get("code") not in NOT_RETRYABLE and state.restarts < ctx.spec.monitor.max_restarts:
                state.restarts += 1
                state.save(self.follow_path)
                ctx.store.append_event(
                    ctx.job_id,
                    "restart",
                    {"reason": outcome.message, "attempt": state.restarts, "of": ctx.spec.monitor.max_restarts},
                )
                self._launch(handle, state)
                state.save(self.follow_path)
                relaunched = True
                continue
            raise JobFailed(err.get("message") or outcome.message, err.get("hint", ""), err.get("code", "failed"))

    def _finals(self) -> list[tuple[str, str]]:
        """The result's files (the final LoRA first; a pair's other expert too) where the trainer writes them,
        each with where it goes here."""
        ctx = self.ctx
        seen = ctx.place.engine_layout(ctx.engine)
        theirs = [ctx.place.on_host(path) for path in final_files(ctx.engine, ctx.spec, seen)]
        return list(zip(theirs, final_files(ctx.engine, ctx.spec, ctx.layout), strict=True))

    def _launch(self, handle: Handle, state: FollowState) -> None:
        ctx = self.ctx
        place, xlayout = ctx.place, ctx.place.layout()
        seen = place.engine_layout(ctx.engine)  # where the engine's files are read: the host's, or our copy
        for action in ctx.engine.prepare_resume(ctx.spec, seen):
            ctx.store.append_event(ctx.job_id, ev.LOG, {"message": action})
        cmd = ctx.engine.command(ctx.spec, seen, place.python())
        cmd = replace(cmd, argv=[place.on_host(a) for a in cmd.argv], cwd=cmd.cwd and place.on_host(cmd.cwd))
        env = {**cmd.env, **{name: os.environ[name] for name in cmd.env_names if name in os.environ}}
        env.update(place.env())
        state.attempt += 1
        state.processed, state.phase = False, "starting"
        host = place.host()
        state.offset = place.log_size(handle)
        ctx.recorder.last_error = None
        host.run(cmd.argv, cmd.cwd or xlayout.root, handle, env)
        host.wait_started(handle)
        ctx.store.append_event(ctx.job_id, "train.launched", {"attempt": state.attempt, "pid": host.pid(handle)})

    def _record_launch(self, handle: Handle, state: FollowState) -> None:
        """A runner that died between launching the trainer and recording it (killed, the store locked or
        gone) left this attempt without its `train.launched`: the one re-attaching records it, so every
        attempt has exactly one."""
        ctx = self.ctx
        last = ctx.store.events(ctx.job_id, types=["train.launched"], latest=True)
        if last and int(last[0].data.get("attempt") or 0) >= state.attempt:
            return
        pid = ctx.place.host().pid(handle)
        ctx.store.append_event(ctx.job_id, "train.launched", {"attempt": state.attempt, "pid": pid, "late": True})

    def _recorded_error(self) -> dict[str, Any] | None:
        """The current attempt's last engine error as stored (whoever read the log: us before a restart,
        or the follower), so the decision after its exit is the same."""
        last = self.ctx.store.events(self.ctx.job_id, types=[ev.ERROR, "train.launched"], latest=True)
        return last[0].data if last and last[0].type == ev.ERROR else None

    def _hand_off(self, state: FollowState) -> bool:
        """Give a running remote trainer to the worker's follower (see running/following.py)."""
        layout = self.ctx.layout
        if not self.handoff or Path(layout.stop_request).exists() or stall_file(layout).exists():
            return False
        if self_follow_file(layout).exists():  # the follower could not follow this host
            return False
        self.ctx.recorder.flush()
        state.save(self.follow_path)
        write_atomic(handoff_file(layout), json.dumps({"attempt": state.attempt, "at": time.time()}))
        self.ctx.emit(ev.LOG, {"message": "training runs; the worker's follower follows it"})
        return True

    def _handed_back_stall(self) -> Stall | None:
        """A stall the follower saw and left for us to act on."""
        path = stall_file(self.ctx.layout)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        finally:
            path.unlink(missing_ok=True)
        return Stall(str(data.get("reason", "no_progress")), str(data.get("message", "stalled")))

    def _account(self, state: FollowState) -> None:
        """Once a second, not on every log poll: it reads the job record."""
        now = time.monotonic()
        if now - self._accounted < 1:
            return
        self._accounted = now
        before = state.budget_warned
        for type_, data, fields in self.meter.check(self.ctx.refresh(), state):
            self.ctx.store.append_event(self.ctx.job_id, type_, data, **fields)
        if state.budget_warned != before:
            state.save(self.follow_path)

    def _follow(self, handle: Handle, state: FollowState, fresh: bool = False) -> tuple[int | None, Any]:
        """Follow the trainer until it exits; its exit code (None after a stall kill, 0 after ending one that
        announced its result but hung instead of exiting: its outputs decide) and the parser."""
        ctx = self.ctx
        place, host, record = ctx.place, ctx.place.host(), ctx.recorder.record
        # A trainer found running has printed already; a fresh one is not signalled before it listens.
        parser = ctx.engine.parser(ctx.spec)
        follow = TrainerFollow(
            ctx.spec, ctx.layout, parser, time.monotonic(), COLLECT_EVERY_S, 0.0, heard=not fresh, phase=state.phase
        )
        stall_kill: Stall | None = None
        handed_stall = self._handed_back_stall()
        while True:
            chunk = host.read(handle.log_file, state.offset)
            status, code = host.status(handle)
            ended = status is not ProcessStatus.RUNNING
            if ended:  # whatever it wrote before it ended
                chunk += host.read(handle.log_file, state.offset + len(chunk))
            now = time.monotonic()
            events = follow.feed(chunk, ended, now)
            state.offset += len(chunk)
            state.phase = follow.phase
            record(events, final=ended)
            if ended:
                record(place.collect_after_exit(), final=True)
                state.save(self.follow_path)
                if status is ProcessStatus.GONE:
                    place.check()
                if stall_kill is not None:
                    code = 0 if stall_kill.reason == "no_exit" else None
                return code, follow.parser
            if chunk:
                if follow.collect_due(events, now):
                    record(place.collect())
                state.save(self.follow_path)
            if place.accrues_cost:
                self._account(state)
            if follow.stop_due(now):
                follow.stop_sent(host.signal(handle, signal.SIGTERM))
                ctx.store.append_event(ctx.job_id, ev.LOG, {"message": "stop requested: checkpointing"})
            if follow.gpu_due(now):
                follow.on_gpu(host.gpu_stats(), now)
            stall = None if stall_kill is not None else (handed_stall or follow.stall(now))
            if stall is not None and handed_stall is None:  # (the follower recorded its own)
                type_, data, _ = follow.stall_event(stall)
                ctx.store.append_event(ctx.job_id, type_, data)
            handed_stall = None
            if stall is not None and (ctx.spec.monitor.on_stall != "notify" or stall.reason == "no_exit"):
                stall_kill = self._on_stall(handle, stall)
            if now - self._last_heartbeat > 5:
                self._last_heartbeat = now
                ctx.store.update(ctx.job_id, heartbeat_at=datetime.now(UTC))
            with ctx.interruptible():  # every round's state is saved: a safe place to leave
                time.sleep(ctx.poll_s)

    def _on_stall(self, handle: Handle, stall: Stall) -> Stall:
        """Kill a stalled trainer: a rented host is not worth more money (move to a new one); here it is
        restarted from its last checkpoint, or the job fails as the stall policy says. One that finished
        but hung on its way out is only ended, whatever the policy: its outputs say whether it is done."""
        ctx = self.ctx
        ctx.place.host().signal(handle, signal.SIGKILL)
        if stall.reason == "no_exit":
            return stall
        restart = ctx.spec.monitor.on_stall == "restart"
        if restart and ctx.place.moves_on_stall:
            raise HostUnreachable(f"stalled: {stall.message}")
        hint = "raise monitor.stall_minutes if the engine is legitimately slow"
        ctx.recorder.last_error = None if restart else {"code": "stalled", "message": stall.message, "hint": hint}
        return stall
