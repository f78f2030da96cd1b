"""`loraflow caption run|export|import`: generate captions, and edit them in a spreadsheet."""

from __future__ import annotations

import csv
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.markup import escape

from loraflow.cli.output import console, waiting
from loraflow.errors import UserInputError
from loraflow.spec import CaptionPolicy, explain

app = typer.Typer(help="Caption images: automatically, or by hand in a spreadsheet.", no_args_is_help=True)


def _folder(path: Path) -> Path:
    if not path.is_dir():
        raise UserInputError(f"{path} is not a folder", fix="give the folder that holds the images")
    return path


@app.command("run")
def run(
    folder: Path = typer.Argument(..., help="Folder of images; caption files are written beside them."),
    backend: str = typer.Option("wd14", "--backend", help="wd14, florence2, joycaption, qwen-vl or template."),
    task: str | None = typer.Option(None, "--task", help="florence2 task, e.g. <MORE_DETAILED_CAPTION>."),
    caption_type: str = typer.Option("descriptive", "--caption-type", help="joycaption: descriptive, booru, ..."),
    caption_length: str = typer.Option("medium-length", "--caption-length", help="joycaption: words or a size."),
    prompt: str | None = typer.Option(None, "--prompt", help="qwen-vl instruction; joycaption extra text."),
    max_new_tokens: int = typer.Option(300, "--max-new-tokens", help="joycaption, qwen-vl: caption length cap."),
    model: str | None = typer.Option(None, "--model", help="Hub id or local folder of the captioner."),
    template: str = typer.Option("a photo of [trigger]", "--template", help="For --backend template."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing captions (kept in a backup)."),
    general_threshold: float = typer.Option(0.35, "--general-threshold"),
    character_threshold: float = typer.Option(0.85, "--character-threshold"),
    max_tags: int | None = typer.Option(None, "--max-tags"),
    caption_ext: str = typer.Option("txt", "--caption-ext"),
) -> None:
    """Caption the images that have no caption yet (existing caption files are never touched unless --overwrite)."""
    from loraflow.caption.run import caption_folder

    try:
        policy = CaptionPolicy(
            backend=backend,
            model=model,
            template=template,
            mode="overwrite" if overwrite else "fill_missing",
            general_threshold=general_threshold,
            character_threshold=character_threshold,
            max_tags=max_tags,
            task=task,
            caption_type=caption_type,
            caption_length=caption_length,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
        )
    except ValidationError as exc:
        raise UserInputError("; ".join(explain(exc)), fix="see `loraflow caption run --help`") from None
    from loraflow.caption.available import why_not

    reason = why_not(backend) if model is None else None
    if reason:  # before any model load: an offline hub used to mean minutes of silence, then a traceback
        raise UserInputError(f"the {backend} captioner cannot run here: {reason}", where="--backend",
                             fix="use --backend template, give --model a local folder, or allow downloads")  # fmt: skip
    # Loading a captioner (downloading its model the first time) takes a while: say so, then count images.
    with waiting(f"loading the {backend} captioner (its model is downloaded the first time)...") as status:

        def progress(done: int, total: int) -> None:
            status.update(f"captioning with {backend}: {done}/{total} images")

        counts = caption_folder(_folder(folder), policy, caption_ext, on_progress=progress)
    console.print(f"{counts['captioned']} captioned, {counts['kept']} kept, of {counts['images']} images")


@app.command("export")
def export(
    folder: Path = typer.Argument(...),
    csv_path: Path = typer.Argument(..., help="The .csv to write."),
    caption_ext: str = typer.Option("txt", "--caption-ext"),
) -> None:
    """Write file,caption rows for editing in a spreadsheet."""
    from loraflow.media.images import IMAGE_EXTENSIONS

    rows = []
    for image in sorted(_folder(folder).rglob("*")):
        if image.suffix.lower() in IMAGE_EXTENSIONS and not image.name.startswith("."):
            cap = image.with_suffix(f".{caption_ext}")
            text = cap.read_text(encoding="utf-8-sig").strip() if cap.exists() else ""
            rows.append((image.relative_to(folder).as_posix(), text))
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)
    console.print(f"wrote {len(rows)} rows to {escape(str(csv_path))}")


@app.command("import")
def import_(
    folder: Path = typer.Argument(...),
    csv_path: Path = typer.Argument(..., help="A file,caption .csv."),
    caption_ext: str = typer.Option("txt", "--caption-ext"),
) -> None:
    """Write the spreadsheet's captions back as caption files (rows naming unknown files are refused)."""
    _folder(folder)
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"file", "caption"} <= set(rows[0]):
        raise UserInputError(f"{csv_path} needs the columns file and caption", where=str(csv_path))
    problems = [r["file"] for r in rows if not (folder / r["file"]).is_file() or ".." in Path(r["file"]).parts]
    if problems:
        raise UserInputError(
            f"{len(problems)} row(s) name files that are not in {folder}: {', '.join(problems[:5])}",
            where=str(csv_path),
            fix="keep the file column as exported",
        )
    for r in rows:
        (folder / r["file"]).with_suffix(f".{caption_ext}").write_text(r["caption"].strip() + "\n", encoding="utf-8")
    console.print(f"{len(rows)} caption(s) written")
