"""A `compute.gpus: 2` job through the runner (issue 31): the trainer runs as two CPU processes under the real
`accelerate launch` (gloo); one rank killed mid-run is noticed (the launcher ends the other and exits), the
runner restarts the trainer from the last checkpoint, and the losses after the resume are those of a run
that was never interrupted. A stop under two processes ends the job stopped, and it resumes to the end."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml

from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.testing.launch_record import rank_pids
from loraflow.trainer.config import TrainerConfig
from loraflow.trainer.loop import train
from tests.conftest import EXAMPLES
from tests.integration.test_local_jobs import only_job, shared_models, wait_for  # noqa: F401  (fixture)
from tests.trainer.test_trainer import events_of


def write_spec(tmp_path: Path, steps: int) -> Path:
    spec = {
        "name": "duo",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "tiny-flux",
        "compute": {"gpus": 2},
        "training": {"steps": steps, "batch_size": 1, "gradient_accumulation": 2},
        "sampling": {"prompts": ["[trigger] on the moon"], "every_n_steps": 0},
        "checkpointing": {"every_n_steps": 10, "keep_last": 20},
        "monitor": {"max_restarts": 2},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def last_loss_per_step(store: Store, job_id: str) -> dict[int, float]:
    return {e.data["step"]: e.data["loss"] for e in store.events(job_id, types=["progress"])}


@pytest.mark.timeout(1200)
def test_killed_rank_is_noticed_and_the_job_resumes_exactly(tmp_path: Path, cli, capsys) -> None:
    assert cli("train", write_spec(tmp_path, steps=60), "--detach").code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: store.get(job.id).step >= 12, what="training past the step-10 checkpoint")
    launcher = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "train"))
    assert launcher is not None
    ranks = rank_pids(launcher)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGKILL)
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=600, what="the job to finish")
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, job.error
    assert job.step == 60
    assert len(store.events(job.id, types=["restart"])) == 1  # the dead rank ended the launcher: one restart
    (resumed,) = store.events(job.id, types=["resumed"])
    assert resumed.data["step"] >= 10 and resumed.data["step"] % 10 == 0
    got = last_loss_per_step(store, job.id)
    # the same job never interrupted, in one process accumulating the whole global batch
    cfg = TrainerConfig.read(job.folder / "engine" / "config.json")
    assert train(cfg.model_copy(update={"output_dir": str(tmp_path / "reference")})) == 0
    want = {e["step"]: e["loss"] for e in events_of(capsys) if e["event"] == "progress"}
    assert sorted(want) == list(range(1, 61))
    # the store keeps a thinned progress stream (not every step): each kept step, and several after the resume
    after = [s for s in got if s > resumed.data["step"]]
    assert 60 in got and len(after) >= 5, sorted(got)
    assert [got[s] for s in sorted(got)] == pytest.approx([want[s] for s in sorted(got)], rel=1e-5, abs=2e-6)


@pytest.mark.timeout(900)
def test_stop_under_two_processes_then_resume(tmp_path: Path, cli) -> None:
    assert cli("train", write_spec(tmp_path, steps=60), "--detach").code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: store.get(job.id).step >= 5, what="training to pass step 5")
    stopped = cli("jobs", "stop", job.id)
    assert stopped.code == 0, stopped.out + stopped.err
    job = store.get(job.id)
    assert job.state is JobState.STOPPED
    assert sorted(p.name for p in (job.folder / "checkpoints").iterdir())[-1] == f"step-{job.step:06d}"
    assert cli("jobs", "resume", job.id).code == 0
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED and job.step == 60, job.error
