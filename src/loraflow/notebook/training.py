"""Step 8: start the job, or resume the one with this name, and follow it to the end."""

from __future__ import annotations

import time
from typing import Any

from loraflow.notebook.settings import Settings, build_spec, output_root
from loraflow.notebook.stops import NotebookStop

# Keys that only steer the run around the training (money, publishing, notices, stall handling): a job
# whose training settings match is still the same job when these differ, and keeps its own values.
RUN_ONLY_KEYS = ("budget", "publish", "notifications", "wandb", "monitor")


def spec_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: old -> new` for every spec value that differs, by dotted key path."""
    changes: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}.{key}" if prefix else str(key)
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += spec_changes(a, b, path)
        elif a != b:
            changes.append(f"{path}: {a!r} -> {b!r}")
    return changes


def _trains_differently(changes: list[str]) -> list[str]:
    return [c for c in changes if c.split(".", 1)[0].split(":", 1)[0] not in RUN_ONLY_KEYS]


def set_pause(job_id: str, stop_at_step: int | None) -> None:
    """Ask the builtin trainer to pause with a checkpoint at exactly this step (None: no pause)."""
    from loraflow import paths
    from loraflow.trainer.events import PAUSE_FILE

    path = paths.job_dir(job_id) / PAUSE_FILE
    if stop_at_step is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{stop_at_step}\n", encoding="utf-8")


def start_or_resume(settings: Settings, stop_at_step: int | None = None) -> str:
    """The job for these settings: re-attach to a running one, resume a stopped one, or start a new one.

    A job is reused only when it was started with the same training settings; after a change of steps,
    learning rate or any other key that decides what is trained, a new job starts and the cell says why
    (an old finished job is never passed off as the new settings' result)."""
    from loraflow.cli.train_cmd import submit
    from loraflow.jobs.states import ACTIVE, RESUMABLE, JobState
    from loraflow.jobs.store import Store
    from loraflow.running.control import start_runner

    output_root(settings)
    spec = build_spec(settings)
    wanted = spec.to_dict()
    store = Store()
    same_name = [j for j in store.list_jobs(limit=200) if j.name == spec.name and j.state is not JobState.CANCELLED]
    for job in same_name:
        changes = spec_changes(job.spec, wanted)
        if _trains_differently(changes):
            continue
        if changes:
            print(f"note: job {job.id} keeps its own {', '.join(changes[:4])} (a new name applies them)")
        if job.state in ACTIVE:
            print(f"re-attaching to job {job.id} ({job.state.value}, same settings)")
            set_pause(job.id, stop_at_step)
            start_runner(job.id)
            return job.id
        if job.state in RESUMABLE and settings.resume:
            print(f"resuming job {job.id} ({job.state.value} at step {job.step}/{job.total_steps}, same settings)")
            set_pause(job.id, stop_at_step)
            store.transition(job.id, JobState.PENDING, data={"resume": True})
            start_runner(job.id)
            return job.id
        if job.state in (JobState.COMPLETED, JobState.AWAITING_APPROVAL):
            print(f"job {job.id} already trained these settings ({job.state.value}); using its result")
            return job.id
    running = [j for j in same_name if j.state in ACTIVE]
    if running:
        changes = _trains_differently(spec_changes(running[0].spec, wanted))
        raise NotebookStop(
            f"job {running[0].id} named {spec.name!r} is still {running[0].state.value} with other settings "
            f"({'; '.join(changes[:4])})",
            fix=f"wait for it, stop it (loraflow jobs stop {running[0].id}), or give the new run another name",
        )
    job_id = submit(spec)
    set_pause(job_id, stop_at_step)
    if same_name:
        changes = _trains_differently(spec_changes(same_name[0].spec, wanted))
        shown = "; ".join(changes[:4]) + ("; ..." if len(changes) > 4 else "")
        print(f"settings changed since job {same_name[0].id} ({shown}): started a new job {job_id}")
    else:
        print(f"started a new job {job_id}")
    return job_id


def follow(job_id: str, stop_at_step: int | None = None, poll_s: float = 0.5) -> str:
    """Print progress until the job ends (re-run the cell to re-attach after closing the tab).

    stop_at_step pauses the job with a checkpoint at that step: the builtin trainer pauses there exactly;
    other engines are asked to stop as soon as the step is seen, which lands a few steps later."""
    from loraflow.jobs.states import ACTIVE
    from loraflow.jobs.store import Store

    store = Store()
    if stop_at_step is not None:
        set_pause(job_id, stop_at_step)
    exact = store.get(job_id).engine == "builtin"
    seq, last_print = 0, 0.0
    while True:
        for e in store.events(job_id, after_seq=seq):
            seq = e.seq
            if e.type == "progress":
                step = e.data["step"]
                if time.monotonic() - last_print > 2 or step == e.data["total"]:
                    last_print = time.monotonic()
                    print(f"step {step}/{e.data['total']}  loss {e.data.get('loss')}  {e.data.get('rate')} it/s")
                if stop_at_step is not None and step >= stop_at_step and not exact:
                    from loraflow.running.control import request_stop

                    request_stop(job_id)
                    stop_at_step = None
            elif e.type in ("resumed", "checkpoint.saved", "error", "stall.detected", "restart", "job.state"):
                print(f"{e.type}: {e.data}")
        job = store.get(job_id)
        if job.state not in ACTIVE:
            print(f"job {job_id}: {job.state.value} at step {job.step}/{job.total_steps}")
            return job.state.value
        time.sleep(poll_s)
