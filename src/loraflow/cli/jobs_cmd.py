"""`loraflow jobs list|show|events`."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from loraflow.cli.output import console, print_json
from loraflow.jobs.store import Store

app = typer.Typer(help="Inspect and control jobs.", no_args_is_help=True)


@app.command("list")
def list_jobs(
    state: list[str] = typer.Option(None, "--state", help="Only jobs in this state (repeatable)."),
    limit: int = typer.Option(50, "--limit"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List jobs, newest first."""
    jobs = Store().list_jobs(states=state or None, limit=limit)
    if as_json:
        print_json([j.to_dict() for j in jobs])
        return
    table = Table("name", "state", "stage", "engine", "progress", "loss", "cost", "created")
    table.add_column("id", no_wrap=True, min_width=12)
    for j in jobs:
        progress = f"{j.step}/{j.total_steps}" if j.total_steps else "-"
        loss = f"{j.loss:.4f}" if j.loss is not None else "-"
        table.add_row(
            escape(j.name),
            j.state.value,
            j.stage or "-",
            j.engine,
            progress,
            loss,
            f"${j.cost_usd:.2f}",
            j.created_at.strftime("%m-%d %H:%M"),
            j.id,
        )
    console.print(table)


@app.command("show")
def show(
    job_id: str = typer.Argument(..., help="Job id or a unique prefix."), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Show one job."""
    job = Store().find(job_id)
    data = job.to_dict()
    if as_json:
        print_json({**data, "spec": job.spec})
        return
    table = Table(show_header=False, title=f"job {job.id}")
    for key, value in data.items():
        table.add_row(key, escape(str(value)))
    console.print(table)


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
        console.print(f"{e.seq:5} {e.ts:%H:%M:%S} {e.type:18} {escape(str(e.data))}", markup=True)
