"""`loraflow store recover`: salvage a damaged SQLite job store (jobs/recover.py)."""

from __future__ import annotations

import typer

from loraflow.cli.output import console

app = typer.Typer(help="The job store: recover a damaged SQLite file.", no_args_is_help=True)


@app.command("recover")
def recover_cmd() -> None:
    """Copy what can be read from a damaged SQLite store into a new file; the damaged one is kept beside it."""
    from loraflow import paths
    from loraflow.errors import UserInputError
    from loraflow.jobs.integrity import sqlite_path
    from loraflow.jobs.recover import recover

    path = sqlite_path(paths.database_url())
    if path is None:
        raise UserInputError(
            "`store recover` salvages a SQLite file; LORAFLOW_DATABASE_URL names another database",
            fix="restore PostgreSQL from its backups (pg_dump / point-in-time recovery)",
        )
    if not path.exists() or path.stat().st_size == 0:
        raise UserInputError(f"there is nothing to recover in {path} (missing or empty)", fix="restore a backup")
    done = recover(path)
    for table, count in done.rows.items():
        note = f"  ({done.lost[table]})" if table in done.lost else ""
        console.print(f"{table}: {count} rows{note}")
    for table, why in done.lost.items():
        if table not in done.rows:
            console.print(f"{table}: not recovered ({why})")
    console.print(f"recovered into {done.path}; the damaged file is kept as {done.kept}")
