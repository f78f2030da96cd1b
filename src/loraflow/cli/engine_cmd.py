"""`loraflow render SPEC` and `loraflow logs parse`: what an engine will be given, and what it said."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from loraflow.cli.output import console
from loraflow.engines import get_engine
from loraflow.errors import UserInputError
from loraflow.layout import JobLayout
from loraflow.monitor.events import EngineEvent
from loraflow.spec import load_spec

logs_app = typer.Typer(help="Read engine logs.", no_args_is_help=True)
engines_app = typer.Typer(
    help="The external trainers (ai-toolkit, kohya, musubi) on this machine.", no_args_is_help=True
)
PREVIEW_ROOT = "/JOB"  # stands for the job folder in previews


def render(
    spec_path: Path = typer.Argument(..., help="The training spec."),
    engine: str | None = typer.Option(
        None, "--engine", help="builtin, ai-toolkit, kohya, musubi or fal (default: the spec's)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the files into this folder instead of printing."),
) -> None:
    """Show the files the engine will be given (job folder shown as /JOB). No secret is ever in them."""
    spec = load_spec(spec_path, engine=engine)  # the engine's own catalog overrides and VRAM preset apply
    eng = get_engine(spec.engine.name)
    entry = spec.catalog_entry
    model = entry.hub_id if spec.base_model == entry.id and entry.hub_id else spec.base_model
    files = eng.render(spec, JobLayout(PREVIEW_ROOT), "preview", model)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text, encoding="utf-8")
        console.print(f"wrote {', '.join(files)} to {escape(str(out))}")
        return
    for name, text in files.items():
        console.print(f"[bold]--- {escape(name)} ---[/bold]")
        console.print(text, markup=False, highlight=False)


def parse_log(engine: str, data: bytes, job_name: str, loss_db: Path | None = None) -> list[EngineEvent]:
    if engine == "builtin":
        from loraflow.monitor.builtin_parser import BuiltinParser

        parser = BuiltinParser()
    elif engine == "ai-toolkit":
        from loraflow.engines.aitoolkit_parser import AitkParser

        parser = AitkParser(job_name, loss_db)
    elif engine == "kohya":
        from loraflow.engines.kohya_parser import KohyaParser

        parser = KohyaParser()
    elif engine == "musubi":
        from loraflow.engines.musubi_parser import MusubiParser

        parser = MusubiParser()
    else:
        fix = "use builtin, ai-toolkit, kohya or musubi"
        raise UserInputError(f"unknown engine '{engine}'", fix=fix, where="--engine")
    return [*parser.feed(data), *parser.flush()]


def summarize(events: list[EngineEvent]) -> dict:
    progress = [e.data for e in events if e.type == "progress"]
    return {
        "steps": progress[-1]["step"] if progress else 0,
        "total": progress[-1].get("total") if progress else None,
        "final_loss": next((p["loss"] for p in reversed(progress) if p.get("loss") is not None), None),
        "rate_it_s": progress[-1].get("rate") if progress else None,
        "checkpoints": [e.data["step"] for e in events if e.type == "checkpoint.saved"],
        "resumed_from": [e.data["step"] for e in events if e.type == "resumed"],
        "errors": [e.data for e in events if e.type == "error"],
        "stopped": any(e.type == "stopped" for e in events),
    }


def plot_loss(points: list[tuple[int, float]], dest: Path, size: tuple[int, int] = (800, 400)) -> None:
    """A plain loss-curve PNG (no plotting library needed)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    left, top, right, bottom = 60, 20, size[0] - 20, size[1] - 40
    d.rectangle([left, top, right, bottom], outline="black")
    if points:
        steps = [p[0] for p in points]
        losses = [p[1] for p in points]
        lo, hi = min(losses), max(losses)
        span, smin, ssp = (hi - lo) or 1.0, min(steps), (max(steps) - min(steps)) or 1
        xy = [(left + (s - smin) / ssp * (right - left), bottom - (v - lo) / span * (bottom - top)) for s, v in points]
        d.line(xy, fill=(30, 90, 200), width=2)
        d.text((5, top), f"{hi:.3g}", fill="black")
        d.text((5, bottom - 10), f"{lo:.3g}", fill="black")
        d.text((left, bottom + 10), f"step {smin}", fill="black")
        d.text((right - 80, bottom + 10), f"step {max(steps)}", fill="black")
    d.text((left + 5, top + 5), "loss", fill="black")
    img.save(dest)


@logs_app.command("parse")
def parse_cmd(
    file: Path = typer.Argument(..., help="A log file written by the engine."),
    engine: str = typer.Option(..., "--engine", help="builtin, ai-toolkit, kohya or musubi."),
    name: str = typer.Option("", "--name", help="ai-toolkit job name (its progress bar's label)."),
    as_json: bool = typer.Option(False, "--json", help="Print the events as JSON lines."),
    plot: Path | None = typer.Option(None, "--plot", help="Draw the loss curve into this PNG."),
    loss_db: Path | None = typer.Option(None, "--loss-db", help="ai-toolkit loss_log.db for exact loss."),
) -> None:
    """Summarize an engine log: steps, final loss, speed, checkpoints, errors."""
    if not file.is_file():
        raise UserInputError(f"no log file at {file}")
    data = file.read_bytes()
    if engine == "ai-toolkit" and not name:
        from loraflow.engines.aitoolkit_parser import guess_job_name

        name = guess_job_name(data.decode("utf-8", errors="replace"))
    events = parse_log(engine, data, name, loss_db)
    if as_json:
        for e in events:
            print(json.dumps({"type": e.type, **e.data}))
    else:
        summary = summarize(events)
        console.print(
            f"steps {summary['steps']}/{summary['total']}, final loss {summary['final_loss']}, "
            f"speed {summary['rate_it_s']} it/s, checkpoints {summary['checkpoints']}, "
            f"resumed from {summary['resumed_from'] or '-'}, stopped {summary['stopped']}"
        )
        for error in summary["errors"]:
            console.print(f"[red]error[/red] {escape(error.get('message', ''))} — {escape(error.get('hint', ''))}")
    if plot:
        points = [(e.data["step"], e.data["loss"]) for e in events if e.type == "progress" and "loss" in e.data]
        if loss_db:
            from loraflow.engines.aitoolkit_loss_log import read_loss_log

            points = [(r["step"], r["loss"]) for r in read_loss_log(loss_db)]
        plot_loss(points, plot)
        console.print(f"loss curve: {escape(str(plot))}")


@engines_app.command("install")
def install_cmd(
    name: str = typer.Argument(..., help="ai-toolkit, kohya or musubi."),
    source: Path | None = typer.Option(
        None, "--from", help="A local checkout to use (its venv is built in place; ai-toolkit: CPU)."
    ),
) -> None:
    """Install an engine at its pinned commit with its own venv (under LORAFLOW_HOME/engines)."""
    from loraflow.engines.installed import install

    dest = install(name, source, lambda line: console.print(line, markup=False, highlight=False))
    console.print(f"[green]installed[/green] {escape(name)} at {escape(str(dest))}")


@engines_app.command("list")
def list_cmd() -> None:
    """Which engines are installed, where, with which Python, at which commit (one line each)."""
    from loraflow.engines.installed import ENTRY, describe

    console.print("builtin     installed  (part of loraflow)", markup=False, highlight=False)
    for name in ENTRY:
        e = describe(name)
        if not e.found:
            line = f"{name:<11} missing    {e.root} ({e.via}); install: loraflow engines install {name}"
        else:
            pin = "" if not e.commit or e.commit.startswith(e.pin) else f" (loraflow's pin: {e.pin})"
            commit = f"commit {e.commit[:8]}{pin}" if e.commit else "not a git checkout"
            line = f"{name:<11} installed  {e.root} ({e.via}); python {e.python or 'this Python'}; {commit}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    import os

    key = "FAL_KEY set" if os.environ.get("FAL_KEY") else "FAL_KEY not set: export FAL_KEY=<key id>:<secret>"
    console.print(f"{'fal':<11} hosted     (fal.ai's API; nothing to install); {key}", markup=False, highlight=False)
