"""Following a job live from the event stream (never from logs): progress bar, phases, checkpoints.

Ctrl-C only detaches: the job's runner and trainer are separate processes in their own session.
"""

from __future__ import annotations

import time

from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from loraflow.cli.output import console
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Event, Store
from loraflow.running.control import runner_alive, start_runner

QUIET = {"progress", "caching", "stage.completed", "host.acquired", "checkpoint.synced"}


def describe(e: Event) -> str | None:
    d = e.data
    match e.type:
        case "job.state":
            return f"state: {d.get('from')} -> {d.get('to')}"
        case "stage.started":
            return f"stage {d.get('stage')}"
        case "phase":
            return f"trainer: {str(d.get('phase', '')).replace('_', ' ')}"
        case "checkpoint.saved":
            return f"checkpoint at step {d.get('step')}: {d.get('path')}"
        case "sample.saved":
            return f"sample at step {d.get('step')}: {d.get('path')}"
        case "resumed":
            return f"resumed from step {d.get('step')} ({d.get('checkpoint')})"
        case "restart":
            return f"restarting the trainer ({d.get('reason')}), attempt {d.get('attempt')} of {d.get('of')}"
        case "stall.detected":
            return f"[yellow]stall: {d.get('message')} -> {d.get('action')}[/yellow]"
        case "warning" | "dataset.finding":
            return f"[yellow]warning: {escape(str(d.get('message')))}[/yellow]"
        case "error":
            hint = f" — {d['hint']}" if d.get("hint") else ""
            return f"[red]error: {escape(str(d.get('message')))}{escape(hint)}[/red]"
        case "log":
            return f"[dim]{escape(str(d.get('message')))}[/dim]"
    return None if e.type in QUIET else f"{e.type} {escape(str(d))}"


def follow(store: Store, job_id: str, after_seq: int = 0, poll_s: float = 0.3) -> JobState:
    """Print the job's events as they come until it leaves the active states; returns the final state."""
    seq = after_seq
    dead_since: float | None = None
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("training", total=None, loss="-", rate="")
        while True:
            for e in store.events(job_id, after_seq=seq):
                seq = e.seq
                if e.type == "progress":
                    rate = float(e.data.get("rate") or 0)
                    speed = f"{rate:.2f} it/s" if rate >= 1 else (f"{1 / rate:.2f} s/it" if rate else "")
                    loss = e.data.get("loss")
                    progress.update(
                        task,
                        completed=e.data["step"],
                        total=e.data["total"],
                        loss=f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
                        rate=speed,
                    )
                elif e.type == "resumed":
                    progress.update(task, completed=e.data.get("step", 0))
                line = describe(e)
                if line:
                    progress.console.print(line)
            job = store.get(job_id)
            if job.state not in ACTIVE:
                return job.state
            if runner_alive(job_id):
                dead_since = None
            elif dead_since is None:
                dead_since = time.monotonic()
            elif time.monotonic() - dead_since > 3:  # the runner died: start another, it re-attaches
                progress.console.print("[yellow]the job's runner is gone; starting a new one[/yellow]")
                start_runner(job_id)
                dead_since = None
            time.sleep(poll_s)
