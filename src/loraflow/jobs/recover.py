"""`loraflow store recover`: copy what SQLite can still read from a damaged store into a new file.

The new file gets this version's schema (jobs/migrations.py), then every table's rows are copied in
rowid order; where a page cannot be read the copy skips ahead past it and goes on, so one bad page costs
the rows on it, not the table. The damaged file (with its -wal and -shm) is kept beside the new one as
`loraflow.db.damaged-<time>`, never deleted, and the report says how many rows of each table came over.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from loraflow.jobs.integrity import mark_has_jobs

ORDER = ["jobs", "events"]  # parents before children; the other tables follow in any order
SKIPS = [1, 10, 100, 1000, 10_000, 100_000, 1_000_000]  # how far past an unreadable rowid to try next


@dataclass
class Recovered:
    path: Path
    kept: Path
    rows: dict[str, int] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)  # table -> what could not be read


def _tables(conn: sqlite3.Connection) -> list[str]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    names = [n for n in names if not n.startswith("sqlite_")]
    return [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)


def _copy_table(src: sqlite3.Connection, dst: sqlite3.Connection, table: str, out: Recovered) -> None:
    try:
        columns = [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]
    except sqlite3.DatabaseError as exc:
        out.lost[table] = f"schema unreadable: {exc}"
        return
    wanted = {r[1] for r in dst.execute(f'PRAGMA table_info("{table}")')}
    columns = [c for c in columns if c in wanted]
    if not columns:
        out.lost[table] = "no columns in common with this version's schema"
        return
    names = ", ".join(f'"{c}"' for c in columns)
    insert = f'INSERT OR IGNORE INTO "{table}" ({names}) VALUES ({", ".join("?" for _ in columns)})'
    after, copied, skipped = -(2**63), 0, 0
    while True:
        try:
            rows = src.execute(
                f'SELECT rowid, {names} FROM "{table}" WHERE rowid > ? ORDER BY rowid LIMIT 500', (after,)
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            jumped = _skip(src, table, after)
            if jumped is None:
                out.lost[table] = f"stopped after rowid {after}: {exc}"
                break
            skipped += 1
            after = jumped
            continue
        if not rows:
            break
        dst.executemany(insert, [r[1:] for r in rows])
        copied += len(rows)
        after = rows[-1][0]
    out.rows[table] = copied
    if skipped and table not in out.lost:
        out.lost[table] = f"{skipped} unreadable stretch(es) skipped"


def _skip(src: sqlite3.Connection, table: str, after: int) -> int | None:
    """The first rowid past an unreadable one that reads again (None: nothing further can be read)."""
    for step in SKIPS:
        try:
            query = f'SELECT rowid FROM "{table}" WHERE rowid > ? ORDER BY rowid LIMIT 1'
            src.execute(query, (after + step,)).fetchall()
            return after + step
        except sqlite3.DatabaseError:
            continue
    return None


def recover(path: Path) -> Recovered:
    """Salvage `path` into a new file that takes its place; the damaged one is kept beside it."""
    from loraflow.jobs.store import Store

    new = path.with_name(path.name + ".recovering")
    new.unlink(missing_ok=True)
    Store(f"sqlite:///{new}").close()  # this version's schema, empty
    kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Recovered(path, kept)
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    dst = sqlite3.connect(new)
    try:
        dst.execute("PRAGMA foreign_keys=OFF")
        try:
            tables = _tables(src)
        except sqlite3.DatabaseError as exc:
            tables = []
            out.lost["*"] = f"the table list is unreadable: {exc}"
        for table in tables:
            if table == "schema_version":
                continue
            _copy_table(src, dst, table, out)
        dst.commit()
    finally:
        src.close()
        dst.close()
    for suffix in ("", "-wal", "-shm"):
        old = path.with_name(path.name + suffix)
        if old.exists():
            shutil.move(old, kept.with_name(kept.name + suffix))
    new.replace(path)
    if out.rows.get("jobs"):
        mark_has_jobs(f"sqlite:///{path}")
    return out
