"""A damaged or vanished SQLite store is refused at open, never used or silently replaced.

- At open, `PRAGMA quick_check` (and SQLite's own "file is not a database") name a damaged file in one
  line with the fix: restore a backup, or `loraflow store recover`, which copies what SQLite can still
  read into a new file and keeps the damaged one beside it (`jobs/recover.py`).
- The first job written marks the store (`loraflow.db.has-jobs` beside it). A missing or 0-byte file
  where that mark says jobs existed is refused, instead of a new empty store hiding every job.
- A reserve (`loraflow.db.reserve`, RESERVE_BYTES of real data) lies beside the file. When the disk fills
  up, the store gives it back (jobs/outage.py) so the write that records the failure (`disk_full`)
  still fits, instead of the runner crashing with the job left `training` and nothing said.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, text

from loraflow.errors import LoraflowError

MARK = ".has-jobs"
RESERVE = ".reserve"
RESERVE_BYTES = 256 << 10  # the few transactions that record a failure (WAL frames of 4 KiB pages)


class StoreDamaged(LoraflowError):
    """The store's file is damaged, missing or emptied: nothing is written until a person decides."""


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other databases and in-memory ones)."""
    if not url.startswith("sqlite:///"):
        return None
    raw = url.removeprefix("sqlite:///").split("?", 1)[0]
    return None if raw in ("", ":memory:") else Path(raw)


def mark_of(path: Path) -> Path:
    return path.with_name(path.name + MARK)


def mark_has_jobs(url: str) -> None:
    """Note beside the file that it holds jobs (once; cheap afterwards)."""
    path = sqlite_path(url)
    if path is not None and not mark_of(path).exists():
        mark_of(path).write_text("this store has held jobs: a missing or empty store here is refused\n")


def check_before_open(url: str) -> None:
    path = sqlite_path(url)
    if path is None or not mark_of(path).exists():
        return
    if not path.exists() or path.stat().st_size == 0:
        what = "missing" if not path.exists() else "empty (0 bytes)"
        raise StoreDamaged(
            f"the job store {path} is {what}, but it held jobs ({mark_of(path).name} beside it says so)",
            fix=f"restore {path.name} from a backup; to start an empty store on purpose, delete {mark_of(path)}",
        )


def damaged(path: Path | str, detail: str) -> StoreDamaged:
    first = detail.strip().splitlines()[0] if detail.strip() else "unknown damage"
    return StoreDamaged(
        f"the job store {path} is damaged ({first})",
        fix="restore it from a backup, or run `loraflow store recover` to copy what can be read into a new "
        "file (the damaged one is kept beside it)",
    )


def quick_check(engine: Engine, url: str) -> None:
    """SQLite's own consistency check of every page (fast: no index cross-checks)."""
    path = sqlite_path(url)
    if path is None:
        return
    with engine.connect() as conn:
        rows = [r[0] for r in conn.execute(text("PRAGMA quick_check")).fetchall()]
    if rows != ["ok"]:
        raise damaged(path, "; ".join(str(r) for r in rows[:3]))


def reserve_of(path: Path) -> Path:
    return path.with_name(path.name + RESERVE)


def ensure_reserve(url: str) -> None:
    """Set the reserve aside while there is room (written, not sparse: a hole would reserve nothing)."""
    path = sqlite_path(url)
    if path is None or not path.parent.is_dir():
        return
    reserve = reserve_of(path)
    if reserve.exists() and reserve.stat().st_size >= RESERVE_BYTES:
        return
    try:
        with open(reserve, "wb") as handle:
            handle.write(b"\0" * RESERVE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:  # no room for it now: the next open tries again
        reserve.unlink(missing_ok=True)


def give_back_reserve(url: str) -> bool:
    """Free the reserve for the write that records a full disk; False when there is none left."""
    path = sqlite_path(url)
    if path is None or not reserve_of(path).exists():
        return False
    reserve_of(path).unlink(missing_ok=True)
    return True
