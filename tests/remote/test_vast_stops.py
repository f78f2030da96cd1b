"""A cancel on a rented job: checked between stages, so nothing is rented after it (the Vast.ai emulator
shows no offer search and no instance)."""

from __future__ import annotations

from pathlib import Path

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.spec import load_spec
from tests.integration.test_stops import _assert_ended_before_render, _cancel_while_preparing
from tests.remote.test_vast_jobs import created, remote_spec


def test_cancel_while_preparing_a_rented_job_never_rents(tmp_path: Path, cli, vast, monkeypatch) -> None:
    spec = remote_spec(tmp_path, steps=30, every=10)
    store = Store()
    job = store.create_job(load_spec(spec))
    assert _cancel_while_preparing(store, job.id, cli, monkeypatch) is JobState.CANCELLED
    _assert_ended_before_render(store, job.id)
    assert created(vast) == [] and vast.instances() == {}
    assert not [r for r in vast.emulator.requests if r[1] in ("/api/v0/bundles/", "/api/v0/search/asks/")]
    assert store.get(job.id).lease is None
