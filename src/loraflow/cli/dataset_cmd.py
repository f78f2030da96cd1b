"""`loraflow dataset check|prepare|pack`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from loraflow.cli.output import console, err, print_json
from loraflow.dataset import DatasetRun, Report, Severity, pair_needs
from loraflow.dataset.manifest import pack as pack_folder
from loraflow.errors import UserInputError
from loraflow.spec import CaptionPolicy, DatasetChecks, load_spec

app = typer.Typer(help="Check, normalize and pack datasets before any GPU is rented.", no_args_is_help=True)

SpecOpt = typer.Option(None, "--spec", help="Take thresholds, trigger word and caption policy from a spec.")


def _run(
    src: Path,
    spec: Path | None,
    trigger: str | None,
    caption_ext: str | None,
    min_images: int | None,
    min_resolution: int | None,
    max_images: int | None,
) -> DatasetRun:
    checks, policy, trig, ext, clips, pairs = DatasetChecks(), CaptionPolicy(), None, "txt", None, None
    if spec is not None:
        from loraflow.engines.musubi import video_needs

        loaded = load_spec(spec)
        clips = video_needs(loaded)  # a musubi spec's clips are checked against its target_frames
        pairs = pair_needs(loaded)  # an edit model's pairs
        checks, policy = loaded.dataset.checks, loaded.dataset.captions
        trig, ext = loaded.dataset.trigger_word, loaded.dataset.caption_extension
    overrides = {
        k: v
        for k, v in {"min_images": min_images, "min_resolution": min_resolution, "max_images": max_images}.items()
        if v is not None
    }
    checks = checks.model_copy(update=overrides)
    return DatasetRun(src, checks, policy, trigger or trig, caption_ext or ext, clips, pairs)


def show_report(report: Report, verbose: bool = False) -> None:
    table = Table(title=f"dataset {escape(report.source)}", show_header=False)
    table.add_row("images found", str(report.images))
    table.add_row("usable", str(report.usable_images))
    if report.videos:
        table.add_row("video clips", f"{report.usable_videos} usable of {report.videos}")
    table.add_row("with captions", str(report.captioned))
    if report.pairs:
        table.add_row("pairs (target + controls)", str(report.pairs))
    table.add_row("size", f"{report.total_bytes / 1e6:.1f} MB")
    top = ", ".join(f"{k} x{v}" for k, v in list(report.resolutions.items())[:4])
    table.add_row("resolutions", top or "-")
    if report.dataset_hash:
        table.add_row("dataset hash", report.dataset_hash[:16])
    if report.output:
        table.add_row("written to", escape(report.output))
    if report.pack:
        table.add_row("packed to", escape(report.pack))
    console.print(table)
    colors = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "dim"}
    for finding in report.findings:
        if finding.severity is Severity.INFO and not verbose:
            continue
        console.print(f"[{colors[finding.severity]}]{escape(finding.line())}[/]")
    n_err, n_warn = len(report.errors), len(report.warnings)
    if report.output and report.errors:  # --drop-bad left the bad files out: what was written is fit
        left_out = len({f.file for f in report.errors if f.file})
        console.print(
            f"[green]wrote a dataset fit to train[/green]: {report.usable_images} images; left out {left_out} "
            f"file(s) with the {n_err} error(s) above; {n_warn} warning(s)"
        )
        return
    verdict = "[green]fit to train[/green]" if report.ok else "[red]not fit to train[/red]"
    console.print(f"{verdict}: {n_err} error(s), {n_warn} warning(s)")


Trigger = typer.Option(None, "--trigger", help="Trigger word to place in captions.")
CapExt = typer.Option(None, "--caption-ext", help="Caption file extension (default txt).")
MinImages = typer.Option(None, "--min-images")
MinRes = typer.Option(None, "--min-resolution", help="Shorter side in pixels.")
MaxImages = typer.Option(None, "--max-images")
AsJson = typer.Option(False, "--json", help="Print the report as JSON.")
Verbose = typer.Option(False, "--verbose", "-v", help="Also list informational findings.")


@app.command("check")
def check(
    src: Path = typer.Argument(..., help="Folder, .zip or .tar of images."),
    spec: Path | None = SpecOpt,
    trigger: str | None = Trigger,
    caption_ext: str | None = CapExt,
    min_images: int | None = MinImages,
    min_resolution: int | None = MinRes,
    max_images: int | None = MaxImages,
    as_json: bool = AsJson,
    verbose: bool = Verbose,
) -> None:
    """Say whether a dataset is fit to train on, and what to fix. Writes nothing. Exit 2 on an error."""
    report = _run(src, spec, trigger, caption_ext, min_images, min_resolution, max_images).check()
    print_json(report.to_dict()) if as_json else show_report(report, verbose)
    if not report.ok:
        raise typer.Exit(2)


@app.command("prepare")
def prepare(
    src: Path = typer.Argument(..., help="Folder, .zip or .tar of images."),
    out: Path = typer.Option(..., "--out", "-o", help="New or empty folder for the normalized copy."),
    pack: Path | None = typer.Option(None, "--pack", help="Also write a tar of the result here."),
    drop_bad: bool = typer.Option(False, "--drop-bad", help="Leave out files with errors instead of stopping."),
    spec: Path | None = SpecOpt,
    trigger: str | None = Trigger,
    caption_ext: str | None = CapExt,
    min_images: int | None = MinImages,
    min_resolution: int | None = MinRes,
    max_images: int | None = MaxImages,
    as_json: bool = AsJson,
    verbose: bool = Verbose,
) -> None:
    """Write a normalized copy (RGB, upright, UTF-8 captions, manifest.json). The source is never modified."""
    report = _run(src, spec, trigger, caption_ext, min_images, min_resolution, max_images).prepare(
        out, drop_bad=drop_bad, pack_to=pack
    )
    print_json(report.to_dict()) if as_json else show_report(report, verbose)
    if report.output is None:
        per_file = len({f.file for f in report.errors if f.file})
        if per_file and not drop_bad:
            hint = f"Fix the errors above, or run again with --drop-bad to leave out the {per_file} file(s) with them."
        else:
            hint = "Fix the errors above: they concern the whole dataset, which --drop-bad cannot mend."
        err(f"nothing was written. {hint}")
        raise typer.Exit(2)


@app.command("pack")
def pack_cmd(
    folder: Path = typer.Argument(..., help="A folder written by `dataset prepare`."),
    dest: Path = typer.Argument(..., help="The .tar to write."),
) -> None:
    """Pack a prepared dataset into a reproducible tar with its manifest first."""
    if not (folder / "manifest.json").is_file():
        raise UserInputError(f"{folder} has no manifest.json", fix="run `loraflow dataset prepare` first")
    digest = pack_folder(folder, dest)
    console.print(f"packed {escape(str(dest))} sha256 {digest}")
