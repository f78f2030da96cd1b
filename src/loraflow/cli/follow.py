"""Following a job live from the event stream (never from logs): progress bar, phases, checkpoints.

Ctrl-C only detaches: the job's runner and trainer are separate processes in their own session.
"""

from __future__ import annotations

import time

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from loraflow.cli.output import console
from loraflow.cli.sentences import describe
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.running.control import runner_alive, start_runner


def follow(store: Store, job_id: str, after_seq: int = 0, poll_s: float = 0.3) -> JobState:
    """Print the job's events as they come until it leaves the active states; returns the final state."""
    seq = after_seq
    dead_since: float | None = None
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[steps]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("starting", total=None, loss="-", rate="", steps="")
        while True:
            for e in store.events(job_id, after_seq=seq):
                seq = e.seq
                if e.type == "progress":
                    rate = float(e.data.get("rate") or 0)
                    speed = f"{rate:.2f} it/s" if rate >= 1 else (f"{1 / rate:.2f} s/it" if rate else "")
                    loss = e.data.get("loss")
                    step, total = e.data.get("step") or 0, e.data.get("total")
                    progress.update(
                        task,
                        description="training",
                        completed=step,
                        total=total,
                        steps=f"{step}/{total} steps" if total else f"step {step}",
                        loss=f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
                        rate=speed,
                    )
                elif e.type == "resumed":
                    progress.update(task, completed=e.data.get("step", 0))
                elif e.type == "stage.started":
                    progress.update(task, description=str(e.data.get("stage") or "working"))
                elif e.type == "phase":
                    progress.update(task, description=str(e.data.get("phase") or "working").replace("_", " "))
                line = describe(e.type, e.data)
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
