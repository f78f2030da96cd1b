"""`loraflow spec init|validate`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from loraflow.cli.output import console, print_json
from loraflow.errors import UserInputError
from loraflow.spec import STARTER_SPEC, advice, load_spec

app = typer.Typer(help="Write and check training specs.", no_args_is_help=True)


@app.command("init")
def init(
    path: Path = typer.Argument(Path("loraflow.yaml"), help="Where to write the starter spec."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented starter spec."""
    if path.exists() and not force:
        raise UserInputError(f"{path} already exists", fix="pass --force to overwrite it, or give another path")
    path.write_text(STARTER_SPEC, encoding="utf-8")
    console.print(f"wrote {path}; edit dataset.path and trigger_word, then `loraflow spec validate {path}`")


@app.command("validate")
def validate(
    path: Path = typer.Argument(..., help="Spec file to check."),
    show: bool = typer.Option(False, "--show", help="Print the resolved spec with every default filled in."),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved spec as JSON."),
) -> None:
    """Check a spec; every problem is named by its key path with the fix, all at once."""
    spec = load_spec(path, check_dataset=True)
    if as_json:
        print_json(spec.to_dict())
        return
    if show:
        console.print(spec.to_yaml(), markup=False)
    t = spec.training
    length = f"{t.steps} steps" if t.steps else f"{t.epochs} epochs"
    console.print(
        f"[green]ok[/green] {path}: {spec.name} on {spec.base_model} with {spec.engine.name}, {length}, "
        f"rank {spec.network.rank}, resolution {t.resolution}, provider {spec.compute.provider}"
    )
    for line in advice(spec):
        console.print(f"[yellow]warning[/yellow] {escape(line)}")
    from loraflow.engines.installed import EngineNotInstalled, require_engine

    try:
        require_engine(spec)
    except EngineNotInstalled as exc:  # the spec is valid; training it here needs the engine first
        console.print(f"[yellow]warning[/yellow] {escape(exc.render())}")


@app.command("keys")
def keys() -> None:
    """Print every spec key with its type, default and meaning (Markdown), from the schema itself."""
    from loraflow.spec_docs import markdown_table

    sys.stdout.write(markdown_table())
