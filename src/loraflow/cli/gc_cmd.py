"""`loraflow gc`: give back disk space by the retention policy (platform/gc.py), or say what it would free."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from loraflow.cli.output import console, print_json


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be freed, remove nothing."),
    older_than_days: float | None = typer.Option(
        None, "--older-than-days", help="Caches, intermediate checkpoints and run state of ended jobs "
        "untouched this long [env LORAFLOW_GC_OLDER_THAN_DAYS, 14]."
    ),
    failed_days: float | None = typer.Option(
        None, "--failed-days", help="Failed and cancelled jobs' folders untouched this long "
        "(env LORAFLOW_GC_FAILED_DAYS, default 30)."
    ),
    uploads_days: float | None = typer.Option(
        None,
        "--uploads-days",
        help="Uploads no job uses (env LORAFLOW_GC_UPLOADS_DAYS, or LORAFLOW_UPLOAD_TTL_HOURS in hours; default 1).",
    ),
    include_bundles: bool = typer.Option(
        False, "--include-bundles", help="Also bundles and LoRAs, published or not (kept otherwise)."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Remove what ended jobs no longer need; never an active job or one awaiting approval."""
    from loraflow import paths
    from loraflow.errors import UserInputError
    from loraflow.jobs.store import Store
    from loraflow.platform.gc import GcPolicy, collect

    flags = {"--older-than-days": older_than_days, "--failed-days": failed_days, "--uploads-days": uploads_days}
    for flag, value in flags.items():
        if value is not None and value < 0:
            raise UserInputError(f"{flag} {value:g} is negative", fix=f"give {flag} 0 or more days")
    policy = GcPolicy.from_env()
    if older_than_days is not None:
        policy.older_than_days = older_than_days
    if failed_days is not None:
        policy.failed_days = failed_days
    if uploads_days is not None:
        policy.uploads_days = uploads_days
    policy.include_bundles = policy.include_bundles or include_bundles
    plans = collect(Store(), policy, dry_run=dry_run)
    total = sum(p.bytes for p in plans)
    rows = [p.to_dict(paths.job_dir(p.job_id) if p.job_id else paths.home() / "uploads") for p in plans]
    if as_json:
        print_json({"dry_run": dry_run, "bytes": total, "jobs": rows})
        return
    table = Table("job", "state", "what", "paths", "bytes")
    for row in rows:
        shown = ", ".join(row["paths"][:4]) + (f" (+{len(row['paths']) - 4})" if len(row["paths"]) > 4 else "")
        table.add_row(
            row["job_id"] or "uploads", row["state"] or "-", ", ".join(row["kinds"]), escape(shown),
            human_bytes(row["bytes"]),
        )
    if rows:
        console.print(table)
    verb = "would free" if dry_run else "freed"
    console.print(f"{verb} {human_bytes(total)} in {len(rows)} place{'s' if len(rows) != 1 else ''}")
