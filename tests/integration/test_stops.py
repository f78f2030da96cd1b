"""Stop, cancel and budget stop end through one path: checked between stages, nothing rendered, rented or
launched after it, and the end event names the checkpoint kept or says why there was none."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraflow.dataset import DatasetRun
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.running.runner import JobRunner
from loraflow.spec import load_spec
from tests.integration.test_local_jobs import wait_for, write_spec


def _cancel_while_preparing(store: Store, job_id: str, cli, monkeypatch: pytest.MonkeyPatch) -> JobState:
    """Run the job's runner here; its prepare stage waits until the user's cancel has landed."""
    entered = threading.Event()
    original = DatasetRun.prepare
    stop_file = Path(JobLayout(str(store.get(job_id).folder)).stop_request)

    def prepare(self: DatasetRun, *args: Any, **kwargs: Any) -> Any:
        entered.set()
        wait_for(stop_file.exists, timeout=120, what="the cancel's stop request")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DatasetRun, "prepare", prepare)
    ended: list[JobState] = []
    runner = threading.Thread(target=lambda: ended.append(JobRunner(store, job_id).run()), daemon=True)
    runner.start()
    assert entered.wait(120), "the runner never reached prepare"
    assert store.get(job_id).state is JobState.PREPARING
    result = cli("jobs", "cancel", job_id)
    assert result.code == 0, result.out + result.err
    runner.join(120)
    assert ended == [JobState.STOPPED]
    return store.get(job_id).state


def _assert_ended_before_render(store: Store, job_id: str) -> None:
    types = [e.type for e in store.events(job_id)]
    assert "train.launched" not in types and "host.acquired" not in types
    started = [e.data["stage"] for e in store.events(job_id, types=["stage.started"])]
    assert started == ["prepare"]  # not render, acquire or train
    (stopped,) = [e.data for e in store.events(job_id, types=["job.state"]) if e.data["to"] == "stopped"]
    assert stopped["step"] == 0 and stopped["checkpoint"] is None
    assert stopped["reason"] == (
        "no checkpoint existed (stopped at step 0; the trainer saves every 10 steps and on a stop)"
    )


def test_cancel_while_preparing_never_launches_the_trainer(tmp_path: Path, cli, monkeypatch) -> None:
    store = Store()
    job = store.create_job(load_spec(write_spec(tmp_path)))
    assert _cancel_while_preparing(store, job.id, cli, monkeypatch) is JobState.CANCELLED
    _assert_ended_before_render(store, job.id)
    assert not (job.folder / "engine").exists() and not (job.folder / "run" / "train.pid").exists()


def test_resume_forgets_an_old_stop_request(tmp_path: Path, cli, monkeypatch) -> None:
    """A stop request left over (its runner died before acting on it) must not end the resumed run."""
    spec = yaml.safe_load(write_spec(tmp_path).read_text())
    spec["training"]["steps"] = 10
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    store = Store()
    job = store.create_job(load_spec(tmp_path / "s.yaml"))
    store.transition(job.id, JobState.STOPPED)
    stop_file = Path(JobLayout(str(job.folder)).stop_request)
    stop_file.parent.mkdir(parents=True, exist_ok=True)
    stop_file.touch()
    result = cli("jobs", "resume", job.id)
    assert result.code == 0, result.out + result.err
    assert store.get(job.id).state is JobState.COMPLETED and store.get(job.id).step == 10
