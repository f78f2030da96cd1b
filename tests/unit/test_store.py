"""The job store: state machine, append-only ordered events, migrations, several writers."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
from sqlalchemy import text

from loraflow.errors import IllegalTransition
from loraflow.jobs.migrations import LATEST
from loraflow.jobs.states import TRANSITIONS, JobState
from loraflow.jobs.store import Store
from loraflow.spec import parse_spec

SPEC = parse_spec({"name": "j", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux"})


def test_create_and_happy_path(loraflow_home: Path) -> None:
    store = Store()
    job = store.create_job(SPEC)
    assert job.state is JobState.PENDING and job.total_steps == 30
    for state in ("preparing", "provisioning", "training", "finishing", "completed"):
        job = store.transition(job.id, state)
    assert job.state is JobState.COMPLETED
    events = store.events(job.id)
    assert [e.seq for e in events] == list(range(1, 7))
    assert events[0].type == "job.created"
    assert [e.data["to"] for e in events[1:]] == ["preparing", "provisioning", "training", "finishing", "completed"]
    assert (loraflow_home / "loraflow.db").exists()


@pytest.mark.parametrize(
    ("start", "bad"),
    [("pending", "completed"), ("completed", "training"), ("cancelled", "pending"), ("training", "awaiting_approval")],
)
def test_illegal_transitions_raise(start: str, bad: str) -> None:
    store = Store()
    job = store.create_job(SPEC)
    store.update(job.id, state=start)
    with pytest.raises(IllegalTransition, match=f"from {start} to {bad}"):
        store.transition(job.id, bad)
    assert store.get(job.id).state.value == start
    assert [e.type for e in store.events(job.id)] == ["job.created"]


def test_every_state_has_rules() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for state in (JobState.FAILED, JobState.STOPPED, JobState.STOPPED_BUDGET):
        assert JobState.PENDING in TRANSITIONS[state]  # resumable


def test_state_survives_reopen_and_schema_is_versioned() -> None:
    job = Store().create_job(SPEC)
    store = Store()
    assert store.get(job.id).name == "j"
    with store.engine.connect() as conn:
        assert conn.execute(text("select max(version) from schema_version")).scalar() == LATEST
        assert conn.execute(text("pragma journal_mode")).scalar() == "wal"


def _writer(url: str, job_id: str, n: int) -> None:
    store = Store(url)
    for i in range(n):
        store.append_event(job_id, "progress", {"i": i}, step=i)


def test_concurrent_writers_keep_seq_gap_free() -> None:
    store = Store()
    job = store.create_job(SPEC)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(store.url, job.id, 25)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    seqs = [e.seq for e in store.events(job.id)]
    assert seqs == list(range(1, 77))


def test_list_filter_and_prefix_lookup() -> None:
    store = Store()
    a = store.create_job(SPEC)
    b = store.create_job(SPEC.model_copy(update={"name": "k"}))
    store.transition(b.id, "cancelled")
    assert [j.id for j in store.list_jobs(states=["cancelled"])] == [b.id]
    assert store.count_jobs() == 2
    assert store.find(a.id[:6]).id == a.id
    assert store.list_jobs(owner="someone-else") == []


def test_jobs_cli(cli) -> None:
    store = Store()
    job = store.create_job(SPEC)
    listed = cli("jobs", "list")
    assert listed.code == 0 and job.id in listed.out
    shown = cli("jobs", "show", job.id[:5], "--json")
    assert '"state": "pending"' in shown.out
    evs = cli("jobs", "events", job.id, "--json")
    assert '"type": "job.created"' in evs.out
    missing = cli("jobs", "show", "zzzz")
    assert missing.code == 2 and "no job" in missing.err


def test_latest_event_of_a_type() -> None:
    store = Store()
    job = store.create_job(SPEC)
    for i in range(3):
        store.append_event(job.id, "webhook.delivery", {"seq": i})
        store.append_event(job.id, "progress", {"step": i})
    latest = store.events(job.id, types=["webhook.delivery"], latest=True)
    assert [e.data for e in latest] == [{"seq": 2}]
    assert store.events(job.id, types=["nothing"], latest=True) == []


def test_a_job_that_completes_clears_its_stale_error() -> None:
    """A job resumed after a failure and then completed no longer shows the failure's text (issue 34)."""
    from loraflow.spec import parse_spec

    store = Store()
    job = store.create_job(parse_spec({"name": "e", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux"}))
    store.transition(job.id, "failed", error="the trainer exited with code 137")
    for state in ("pending", "preparing", "provisioning", "training", "finishing", "completed"):
        store.transition(job.id, state)
    assert store.get(job.id).error is None
