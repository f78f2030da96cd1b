"""A damaged, emptied or missing job store, and an unreachable PostgreSQL, through the CLI as a user meets
them: one line naming the problem and the fix, never a traceback, and never an empty store in its place."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from loraflow.jobs.store import Store
from loraflow.spec import parse_spec

SPEC = parse_spec({"name": "d", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux"})
PAGE = 4096


def _store_with_jobs(n: int = 30) -> tuple[Path, list[str]]:
    store = Store()
    ids = []
    for _ in range(n):
        job = store.create_job(SPEC)
        for i in range(20):  # enough rows for several pages
            store.append_event(job.id, "log", {"message": f"line {i} " + "x" * 200})
        ids.append(job.id)
    path = Path(store.url.removeprefix("sqlite:///"))
    store.close()
    with sqlite3.connect(path) as conn:  # everything into the main file, as after a clean shutdown
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path, ids


def _refused(result, *words: str) -> None:
    text = result.out + result.err
    assert result.code == 1, text
    assert "Traceback" not in text
    for word in words:
        assert word in text, text


@pytest.mark.parametrize("damage", ["garbage_header", "half_truncated", "garbage_page"])
def test_a_damaged_store_is_named_with_its_fix(cli, damage: str) -> None:
    """Before: every command ended in a traceback (or, for a bad page, went on reading a broken store)."""
    path, _ = _store_with_jobs()
    data = bytearray(path.read_bytes())
    if damage == "garbage_header":
        data[:100] = b"\xff" * 100
    elif damage == "half_truncated":
        data = data[: len(data) // 2]
    else:
        middle = (len(data) // PAGE // 2) * PAGE
        data[middle : middle + PAGE] = b"\xa5" * PAGE
    path.write_bytes(bytes(data))
    _refused(cli("jobs", "list"), "damaged", "loraflow store recover")


def test_store_recover_salvages_into_a_new_file_and_keeps_the_damaged_one(cli) -> None:
    path, ids = _store_with_jobs()
    data = bytearray(path.read_bytes())
    last = (len(data) // PAGE - 1) * PAGE  # a page of events near the end
    data[last : last + PAGE] = b"\xa5" * PAGE
    path.write_bytes(bytes(data))
    _refused(cli("jobs", "list"), "damaged")
    result = cli("store", "recover")
    assert result.code == 0, result.out + result.err
    assert "the damaged file is kept" in result.out
    kept = [p for p in path.parent.glob(path.name + ".damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(data)  # the damaged file, untouched
    listed = cli("jobs", "list", "--json")
    assert listed.code == 0, listed.err
    store = Store()
    assert {j.id for j in store.list_jobs(limit=100)} == set(ids)  # the jobs table was whole
    assert store.events(ids[0])[0].type == "job.created"


@pytest.mark.parametrize("how", ["emptied", "deleted"])
def test_a_store_that_held_jobs_is_never_silently_replaced(cli, how: str) -> None:
    """Before: a 0-byte file was taken for a new store: `jobs list` showed nothing, exit code 0."""
    path, _ = _store_with_jobs(2)
    for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        extra.unlink(missing_ok=True)
    if how == "emptied":
        path.write_bytes(b"")
    else:
        path.unlink()
    _refused(cli("jobs", "list"), "held jobs", "backup")
    assert not path.exists() or path.stat().st_size == 0  # nothing was created in its place


def test_an_unreachable_postgres_is_one_clear_line(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    monkeypatch.setenv("LORAFLOW_DATABASE_URL", f"postgresql+psycopg://loraflow:pw@127.0.0.1:{port}/jobs")
    result = cli("jobs", "list")
    _refused(result, "unavailable", f"127.0.0.1:{port}", "LORAFLOW_DATABASE_URL")
    assert "pw" not in (result.out + result.err).replace("pwd", "")  # never the password
