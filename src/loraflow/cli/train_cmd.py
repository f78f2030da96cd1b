"""`loraflow train SPEC` and `loraflow demo`."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from loraflow.cli.dataset_cmd import show_report
from loraflow.cli.follow import follow
from loraflow.cli.output import console, waiting
from loraflow.errors import UserInputError
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.spec import TrainSpec, advice, load_spec

EXIT = {JobState.COMPLETED: 0, JobState.AWAITING_APPROVAL: 0, JobState.STOPPED: 0}


def quote_before_renting(spec: TrainSpec, force: bool) -> None:
    """Say what a rented (or hosted) job will cost, and refuse it over budget.max_usd unless forced."""
    if spec.engine.name == "fal":  # (its budget is checked by the engine's preflight)
        from loraflow.engines.fal import quote

        q = quote(spec)
        console.print(f"fal {escape(q['app'])}: {q['steps']} steps at ${q['usd_per_step']}/step = ${q['cost_usd']:.2f}")
        return
    from loraflow.providers.registry import is_rented, provider_for, title

    if not is_rented(spec.compute.provider):
        return
    from loraflow.engines import engine_needs
    from loraflow.running.remote import check_budget

    # The offer search may retry for a minute when the API does not answer: say what is being waited for.
    name = title(spec.compute.provider)
    with waiting(f"asking {name} for offers that fit this job (retried if it does not answer)..."):
        best = provider_for(spec.compute.provider, needs=engine_needs).offers(spec)[0]
    est = best.estimate
    console.print(
        f"cheapest fit: {escape(best.gpu)} at ${est.usd_per_hour:.3f}/h, "
        f"about {est.total_s / 60:.0f} min and ${est.cost_usd:.2f} (details: loraflow estimate)"
    )
    check_budget(spec, est.cost_usd, force)


def submit(spec: TrainSpec, force: bool = False) -> str:
    """Check the engine, the dataset (and the budget), record the job and start its runner; returns the job id."""
    from loraflow.engines import preflight
    from loraflow.engines.installed import require_engine
    from loraflow.engines.local_gpu import require_local_gpu
    from loraflow.running import submit as door

    require_local_gpu(spec)  # flux-dev on a machine with no GPU: refused before any download
    require_engine(spec)  # before anything is made: a missing engine names its install command
    preflight(spec, force)  # a hosted engine's key and price
    try:
        door.check_dataset(spec, None)
    except door.DatasetUnfit as exc:
        show_report(exc.report)
        raise UserInputError(
            "the dataset is not fit to train; nothing was started",
            where=spec.dataset.path,
            fix="fix the errors above (or use `loraflow dataset prepare --drop-bad`)",
        ) from None
    quote_before_renting(spec, force)
    return door.submit(Store(), spec, force=force, dataset_checked=True).id


def attach(store: Store, job_id: str) -> int:
    console.print(f"following job [bold]{job_id}[/bold] (Ctrl-C detaches; training continues)")
    try:
        state = follow(store, job_id)
    except KeyboardInterrupt:
        console.print(f"\ndetached. Training continues. Re-attach: loraflow jobs attach {job_id}")
        return 0
    job = store.get(job_id)
    if state is JobState.FAILED:
        console.print(f"[red]job {job_id} failed[/red]: {escape(job.error or '')}")
    elif state is JobState.STOPPED:
        console.print(f"job {job_id} stopped at step {job.step}. Resume: loraflow jobs resume {job_id}")
    else:
        console.print(f"job {job_id} {state.value}")
        if job.outputs.bundle:
            console.print(f"bundle: {escape(job.outputs.bundle)}")
    return EXIT.get(state, 1)


def train(
    spec_path: Path = typer.Argument(..., help="The training spec (YAML)."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Start and return at once."),
    force: bool = typer.Option(False, "--force", help="Rent even when the estimate is over budget.max_usd."),
) -> None:
    """Train a LoRA from a spec. Keeps running if this terminal goes away; Ctrl-C only detaches."""
    spec = load_spec(spec_path)
    for line in advice(spec):
        console.print(f"[yellow]warning[/yellow] {escape(line)}")
    job_id = submit(spec, force)
    console.print(f"job {job_id} started: {escape(str(Store().get(job_id).folder))}")
    if detach:
        console.print(f"follow it with: loraflow jobs attach {job_id}")
        return
    raise typer.Exit(attach(Store(), job_id))


def demo(
    spec_path: Path | None = typer.Option(None, "--spec", help="Another demo spec (default: the one shipped)."),
) -> None:
    """Train the built-in tiny model on the bundled sample dataset (CPU, a few minutes), from any folder."""
    from importlib import resources

    if spec_path is None:
        spec_path = Path(str(resources.files("loraflow.demo").joinpath("demo.yaml")))
    if not spec_path.is_file():
        raise UserInputError(f"no demo spec at {spec_path}", fix="leave out --spec to run the shipped demo")
    spec = load_spec(spec_path)
    store = Store()
    job_id = submit(spec)
    code = attach(store, job_id)
    job = store.get(job_id)
    table = Table(title="demo result", show_header=False)
    for key, value in [
        ("job", job.id),
        ("state", job.state.value),
        ("steps", f"{job.step}/{job.total_steps}"),
        ("final loss", f"{job.loss:.4f}" if job.loss is not None else "-"),
        ("LoRA", job.outputs.lora or "-"),
        ("bundle", job.outputs.bundle or "-"),
        ("home", os.environ.get("LORAFLOW_HOME", "~/.loraflow")),
    ]:
        table.add_row(key, escape(str(value)))
    console.print(table)
    from loraflow.cli.scorecard_view import print_scorecard

    print_scorecard(job.outputs.scorecard)
    if job.outputs.bundle:
        console.print(f"bundle: {escape(job.outputs.bundle)}")
    raise typer.Exit(code)
