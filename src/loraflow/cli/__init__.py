"""The `loraflow` command. Exit codes: 0 success, 1 the job failed, 2 bad input or usage."""

from __future__ import annotations

import sys

import click
import typer

from loraflow.cli import (
    caption_cmd,
    cloud_cmd,
    dataset_cmd,
    engine_cmd,
    jobs_cmd,
    platform_cmd,
    publish_cmd,
    serve_cmd,
    spec_cmd,
    train_cmd,
)
from loraflow.cli.output import err
from loraflow.errors import LoraflowError

app = typer.Typer(
    name="loraflow",
    help="Turn a folder of images, a trigger word and a base model into a trained, packaged LoRA.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(spec_cmd.app, name="spec")
app.add_typer(dataset_cmd.app, name="dataset")
app.add_typer(jobs_cmd.app, name="jobs")
app.add_typer(caption_cmd.app, name="caption")
app.add_typer(engine_cmd.logs_app, name="logs")
app.add_typer(engine_cmd.engines_app, name="engines")
app.command("render")(engine_cmd.render)
app.add_typer(publish_cmd.notify_app, name="notify")
app.command("publish")(publish_cmd.publish)
jobs_cmd.app.command("approve")(publish_cmd.approve)
app.command("train")(train_cmd.train)
app.command("demo")(train_cmd.demo)
app.command("estimate")(cloud_cmd.estimate)
app.command("offers")(cloud_cmd.offers)
app.command("instances")(cloud_cmd.instances)
app.command("reap")(cloud_cmd.reap)
app.command("serve")(serve_cmd.serve)
app.command("worker")(serve_cmd.worker)
app.add_typer(serve_cmd.tokens_app, name="tokens")
app.add_typer(platform_cmd.credits_app, name="credits")
app.add_typer(platform_cmd.models_app, name="models")


@app.command("bundle")
def bundle(
    job_id: str = typer.Argument(...),
    checkpoint: int | None = typer.Option(None, "--checkpoint", help="Bundle this kept checkpoint step."),
) -> None:
    """Rebuild a job's bundle zip (from the final LoRA or any kept checkpoint)."""
    from loraflow.cli.output import console
    from loraflow.jobs.store import Store
    from loraflow.publish.bundle import build_bundle

    store = Store()
    job = store.find(job_id)
    path = build_bundle(store, job, checkpoint)
    if checkpoint is None:
        store.add_artifacts(job.id, bundle=str(path))
    console.print(str(path))


@app.command()
def version() -> None:
    """Print loraflow's version."""
    from loraflow import __version__

    typer.echo(__version__)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one clear message and an exit code, never a traceback."""
    try:
        code = app(args=argv, standalone_mode=False)
    except LoraflowError as exc:
        err(exc.render())
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
