"""`loraflow jobs list|show|events`."""

from __future__ import annotations

import sys
import time

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from loraflow.cli.output import console, print_json
from loraflow.cli.scorecard_view import print_scorecard
from loraflow.cli.sentences import describe, words
from loraflow.errors import IllegalTransition, UserInputError
from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Job, Store
from loraflow.layout import JobLayout
from loraflow.running.control import request_stop, resume, start_runner, stop

app = typer.Typer(help="Inspect and control jobs.", no_args_is_help=True)


@app.command("list")
def list_jobs(
    state: list[str] = typer.Option(None, "--state", help="Only jobs in this state (repeatable)."),
    limit: int = typer.Option(50, "--limit"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List jobs, newest first (and start a runner again for a job whose runner died)."""
    from loraflow.jobs.queue import snapshot
    from loraflow.running.orphans import adopt_orphans

    store = Store()
    for job_id in adopt_orphans(store):
        if not as_json:
            console.print(f"job {job_id} had lost its runner: started it again (it re-attaches to training)")
    jobs = store.list_jobs(states=state or None, limit=limit)
    places = snapshot(store)
    if as_json:
        print_json([{**j.to_dict(), "queue": p.to_dict() if (p := places.get(j.id)) else None} for j in jobs])
        return
    console.print(jobs_table(jobs, places, console.width))


def jobs_table(jobs: list[Job], places: dict, width: int) -> Table:
    """The job list as a table that fits the terminal: at 80 columns the less used columns go (engine,
    stage, loss, created); the id stays whole, as scripts and people copy it."""
    wide = width >= 120
    columns = ["id", "name", "state", "progress", "queue", "cost"]
    if wide:
        columns[3:3] = ["stage", "engine"]
        columns += ["loss", "created"]
    table = Table(*columns, pad_edge=False, box=None if not wide else box.SIMPLE_HEAD)
    for j in jobs:
        row = {
            "id": j.id,
            "name": escape(j.name),
            "state": j.state.value if wide or not j.stage or j.state not in ACTIVE else f"{j.state.value}/{j.stage}",
            "stage": j.stage or "-",
            "engine": j.engine,
            "progress": f"{j.step}/{j.total_steps}" if j.total_steps else "-",
            "queue": places[j.id].line() if j.id in places else "-",
            "loss": f"{j.loss:.4f}" if j.loss is not None else "-",
            "cost": f"${j.cost_usd:.2f}",
            "created": j.created_at.strftime("%m-%d %H:%M"),
        }
        table.add_row(*(row[c] for c in columns))
    return table


@app.command("show")
def show(
    job_id: str = typer.Argument(..., help="Job id or a unique prefix."), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Show one job (with the delivery state of its webhooks, per receiver)."""
    from loraflow.notify.outbox import summary

    store = Store()
    job = store.find(job_id)
    data = job.to_dict()
    hooks = summary(store, job.id, job.train_spec.notifications)
    if hooks:
        data["webhooks"] = hooks if as_json else "; ".join(_hook_line(h) for h in hooks)
    if as_json:
        print_json({**data, "spec": job.spec})
        return
    table = Table(show_header=False, title=f"job {job.id}", box=box.SIMPLE)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    scorecard = data.get("artifacts", {}).pop("scorecard", None)
    for key, value in data.items():
        if value in (None, "", [], {}):
            continue  # `error None` tells nobody anything
        table.add_row(key.replace("_", " "), escape(words(value)))
    console.print(table)
    print_scorecard(scorecard)


def _hook_line(h: dict) -> str:
    """One receiver's delivery state in a line: `webhook 127.0.0.1: 5 delivered, 1 pending (next job.completed)`."""
    line = f"{h['type']} {h['host']}: {h['delivered']} delivered, {h['pending']} pending, {h['failed']} failed"
    if h["next_event"]:
        line += f" (next {h['next_event']} at {h['next_attempt_at']})"
    if h["last_error"]:
        line += f"; last error: {h['last_error']}"
    return line


@app.command("events")
def events(
    job_id: str = typer.Argument(...),
    after: int = typer.Option(0, "--after", help="Only seq > N."),
    limit: int = typer.Option(1000, "--limit"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Print a job's events in order."""
    store = Store()
    job = store.find(job_id)
    evs = store.events(job.id, after_seq=after, limit=limit)
    if as_json:
        print_json([e.to_dict() for e in evs])
        return
    for e in evs:
        line = describe(e.type, e.data) or escape(f"{e.type}: {words(e.data)}")
        console.print(f"{e.seq:5} {e.ts:%H:%M:%S} {line}", markup=True)


def _train_handle(job: Job) -> Handle:
    return Handle.in_folder(JobLayout(str(job.folder)).run, "train")


def _wait_inactive(store: Store, job_id: str, timeout: float) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = store.get(job_id).state
        if state not in ACTIVE:
            return state
        time.sleep(0.2)
    return store.get(job_id).state


@app.command("attach")
def attach_cmd(job_id: str = typer.Argument(...)) -> None:
    """Follow a job live (starts a new runner if its runner died; it re-attaches to training)."""
    from loraflow.cli.train_cmd import attach

    store = Store()
    job = store.find(job_id)
    if job.state in ACTIVE:
        start_runner(job.id)
    raise typer.Exit(attach(store, job.id))


@app.command("stop")
def stop_cmd(
    job_id: str = typer.Argument(...),
    wait: float = typer.Option(300, "--wait", help="Seconds to wait for the checkpoint."),
) -> None:
    """Stop a job after saving a checkpoint; `loraflow jobs resume` continues it exactly."""
    store = Store()
    job = store.find(job_id)
    stop(store, job.id)  # the same refusal as the API's and the web UI's
    state = _wait_inactive(store, job.id, wait)
    job = store.get(job.id)
    console.print(f"job {job.id} is {state.value} at step {job.step}")
    if state in ACTIVE:
        raise typer.Exit(1)


@app.command("resume")
def resume_cmd(
    job_id: str = typer.Argument(...),
    detach: bool = typer.Option(False, "--detach", "-d", help="Start and return at once."),
    budget: float | None = typer.Option(None, "--budget", help="A new budget.max_usd (after stopped_budget)."),
) -> None:
    """Continue a stopped, failed or budget-stopped job from its last checkpoint."""
    from loraflow.cli.train_cmd import attach

    store = Store()
    job = store.find(job_id)
    if budget is not None:
        if budget <= 0:
            raise UserInputError("--budget must be more than 0 (US dollars)")
        spec = job.train_spec.model_copy(deep=True)
        spec.budget.max_usd = budget
        store.update(job.id, spec=spec.model_dump(mode="json"))
        (job.folder / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    try:
        resume(store, job.id)
    except IllegalTransition as exc:
        raise UserInputError(exc.message) from exc
    if detach:
        console.print(f"job {job.id} resumed; follow it with: loraflow jobs attach {job.id}")
        return
    raise typer.Exit(attach(store, job.id))


@app.command("cancel")
def cancel_cmd(job_id: str = typer.Argument(...)) -> None:
    """Abandon a job for good (its checkpoints stay on disk)."""
    store = Store()
    job = store.find(job_id)
    if job.state in ACTIVE:
        request_stop(job.id)
        _wait_inactive(store, job.id, 300)
    job = store.get(job.id)
    if job.state is JobState.CANCELLED:
        return
    store.transition(job.id, JobState.CANCELLED)
    store.append_event(job.id, "job.cancelled", {})
    console.print(f"job {job.id} cancelled")


@app.command("logs")
def logs_cmd(
    job_id: str = typer.Argument(...),
    follow_log: bool = typer.Option(False, "--follow", "-f", help="Keep printing new output."),
) -> None:
    """Print the trainer's raw output."""
    store = Store()
    job = store.find(job_id)
    handle = _train_handle(job)
    host = LocalHost()
    offset = 0
    while True:
        chunk = host.read(handle.log_file, offset)
        if chunk:
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        if not follow_log or (not chunk and store.get(job.id).state not in ACTIVE):
            return
        time.sleep(0.3)
