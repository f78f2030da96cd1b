"""The `loraflow` command: typer commands that parse arguments, call the doors below and print.
Exit codes: 0 success, 1 the job failed, 2 bad input or usage."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import click
import typer
from typer.core import TyperGroup

from loraflow.errors import LoraflowError


def _group(module: str, attr: str, extra: Callable[[Any], None] | None = None) -> Callable[[str], click.Command]:
    def load(name: str) -> click.Command:
        sub = getattr(importlib.import_module(f"loraflow.cli.{module}"), attr)
        if extra:
            extra(sub)
        outer = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
        outer.add_typer(sub, name=name)  # as add_typer always did: a group even with one command (logs parse)
        return typer.main.get_group(outer).commands[name]

    return load


def _command(module: str, attr: str) -> Callable[[str], click.Command]:
    def load(name: str) -> click.Command:
        single = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
        single.command(name)(getattr(importlib.import_module(f"loraflow.cli.{module}"), attr))
        return typer.main.get_command(single)

    return load


def _with_approve(jobs_app: typer.Typer) -> None:
    from loraflow.cli.publish_cmd import approve

    jobs_app.command("approve")(approve)


# Subcommands by name, with the one line `--help` lists, imported only when one is run: `loraflow --help`
# then loads typer and nothing of torch, pydantic, SQLAlchemy or FastAPI. tests/unit/test_first_hour.py
# checks that each line matches the command's own help.
LAZY: dict[str, tuple[Callable[[str], click.Command], str]] = {
    "spec": (_group("spec_cmd", "app"), "Write and check training specs."),
    "dataset": (_group("dataset_cmd", "app"), "Check, normalize and pack datasets before any GPU is rented."),
    "jobs": (_group("jobs_cmd", "app", _with_approve), "Inspect and control jobs."),
    "caption": (_group("caption_cmd", "app"), "Caption images: automatically, or by hand in a spreadsheet."),
    "logs": (_group("engine_cmd", "logs_app"), "Read engine logs."),
    "engines": (
        _group("engine_cmd", "engines_app"),
        "The external trainers (ai-toolkit, kohya, musubi) on this machine.",
    ),
    "render": (
        _command("engine_cmd", "render"),
        "Show the files the engine will be given (job folder shown as /JOB).",
    ),
    "notify": (_group("publish_cmd", "notify_app"), "Notifications."),
    "store": (_group("store_cmd", "app"), "The job store: recover a damaged SQLite file."),
    "publish": (
        _command("publish_cmd", "publish"),
        "Publish a job's LoRA (the scorecard's best checkpoint by default) to the spec's Hugging Face / S3 /"
        " ComfyDeploy targets.",
    ),
    "train": (
        _command("train_cmd", "train"),
        "Train a LoRA from a spec. Keeps running if this terminal goes away; Ctrl-C only detaches.",
    ),
    "demo": (
        _command("train_cmd", "demo"),
        "Train the built-in tiny model on the bundled sample dataset (CPU, a few minutes), from any folder.",
    ),
    "estimate": (
        _command("cloud_cmd", "estimate"),
        "Predicted time and cost per GPU type on offer, with its parts, before anything is rented.",
    ),
    "offers": (
        _command("cloud_cmd", "offers"),
        "One provider's offers that fit a job (--provider: vastai, runpod, skypilot), cheapest job first.",
    ),
    "instances": (
        _command("cloud_cmd", "instances"),
        "Rented machines labelled by loraflow on every provider, with the job that owns each.",
    ),
    "reap": (
        _command("cloud_cmd", "reap"),
        "Destroy loraflow-labelled machines (every provider) that no live job owns (a crash's leftovers).",
    ),
    "serve": (_command("serve_cmd", "serve"), "Start the API, the web UI and job workers in one process."),
    "worker": (
        _command("serve_cmd", "worker"),
        "Claim and run jobs from the shared database (PostgreSQL for several machines).",
    ),
    "gc": (
        _command("gc_cmd", "gc"),
        "Remove what ended jobs no longer need; never an active job or one awaiting approval.",
    ),
    "tokens": (_group("serve_cmd", "tokens_app"), "API tokens: create, list, revoke."),
    "credits": (_group("platform_cmd", "credits_app"), "Credits: balances, deposits, the ledger, quotes."),
    "models": (
        _group("platform_cmd", "models_app"),
        "The model registry: list, show, review, visibility, trigger map.",
    ),
}
# The operator's commands: listed under `loraflow admin`, not among a user's; `loraflow tokens ...` still runs.
OPERATOR = ("tokens", "credits", "gc", "reap", "worker", "store")


def _admin(name: str) -> click.Command:
    group = click.Group(name, help=LAZY[name][1])
    for sub in OPERATOR:
        group.add_command(load_command(sub), sub)
    return group


LAZY["admin"] = (_admin, "Operator commands: tokens, credits, gc, reap, worker, store.")
_loaded: dict[str, click.Command] = {}


def load_command(name: str) -> click.Command:
    if name not in _loaded:
        _loaded[name] = LAZY[name][0](name)
    return _loaded[name]


class LazyGroup(TyperGroup):
    """The root command: lists every subcommand from LAZY's help lines, imports one only to run it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        mine = [n for n in LAZY if n not in OPERATOR]
        return [*mine, *(n for n in super().list_commands(ctx) if n not in LAZY)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _loaded:
            return _loaded[cmd_name]
        if cmd_name in LAZY:  # listing for --help: a stand-in that carries the help line
            return click.Command(cmd_name, help=LAZY[cmd_name][1])
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in LAZY:
            load_command(args[0])
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="loraflow",
    help="Turn a folder of images, a trigger word and a base model into a trained, packaged LoRA.",
    cls=LazyGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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
        store.update_outputs(job.id, bundle=str(path))
    console.print(str(path))


@app.command()
def version() -> None:
    """Print loraflow's version."""
    from loraflow import __version__

    typer.echo(__version__)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one clear message and an exit code, never a traceback."""
    from loraflow.cli.output import err

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
