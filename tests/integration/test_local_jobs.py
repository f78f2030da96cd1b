"""Local jobs end to end through the CLI: detached runs, kills, stop/resume, re-attach, bundles."""

from __future__ import annotations

import json
import os
import signal
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost, pid_alive
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.publish.bundle import verify_bundle
from tests.conftest import EXAMPLES


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path_factory.getbasetemp() / "shared-models"
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(root))


def write_spec(tmp_path: Path, monitor: dict | None = None, **training: object) -> Path:
    spec = {
        "name": "mascot",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "tiny-flux",
        "training": {"steps": 30, **training},
        "sampling": {"prompts": ["[trigger] on the moon"], "every_n_steps": 0},
        "checkpointing": {"every_n_steps": 10, "keep_last": 20},
        "monitor": {"max_restarts": 2, **(monitor or {})},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_for(check: Callable[[], bool], timeout: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def only_job(store: Store):
    jobs = store.list_jobs()
    assert len(jobs) == 1
    return jobs[0]


def event_types(store: Store, job_id: str) -> list[str]:
    return [e.type for e in store.events(job_id)]


def test_train_follows_to_a_verified_bundle(tmp_path: Path, cli) -> None:
    result = cli("train", write_spec(tmp_path))
    assert result.code == 0, result.out + result.err
    store = Store()
    job = only_job(store)
    assert job.state is JobState.COMPLETED and job.step == 30 and job.loss is not None
    types = event_types(store, job.id)
    for expected in (
        "job.created",
        "stage.started",
        "phase",
        "progress",
        "checkpoint.saved",
        "sample.saved",
        "result",
        "job.completed",
    ):
        assert expected in types
    states = [e.data["to"] for e in store.events(job.id, types=["job.state"])]
    assert states == ["preparing", "provisioning", "training", "finishing", "completed"]
    bundle = Path(job.outputs.bundle)
    assert bundle.name == f"loraflow-mascot-{job.id}.zip"
    assert verify_bundle(bundle) == []
    with zipfile.ZipFile(bundle) as zf:
        names = set(zf.namelist())
        meta = json.loads(zf.read("metadata.json"))
        card = zf.read("README.md").decode()
    assert {
        "mascot.safetensors",
        "metadata.json",
        "config/config.json",
        "samples/grid.png",
        "samples/prompts.json",
        "samples/step-000030/00.png",
        "README.md",
        "SHA256SUMS",
    } <= names
    assert meta["steps"] == 30 and meta["dataset_hash"] == job.outputs.dataset_hash
    assert "torch" in meta["versions"] and meta["spec"]["name"] == "mascot"
    assert "instance_prompt: lfx" in card and "load_lora_weights" in card and "LoraLoaderModelOnly" in card
    assert "bundle:" in result.out and "30/30" in result.out


def test_bad_dataset_refused_before_any_job(tmp_path: Path, cli) -> None:
    spec = yaml.safe_load(write_spec(tmp_path).read_text())
    spec["dataset"]["path"] = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    result = cli("train", tmp_path / "bad.yaml")
    assert result.code == 2
    assert "too_few_images" not in result.err and "usable image" in result.out
    assert Store().list_jobs() == []


def test_killed_trainer_resumes_from_last_checkpoint(tmp_path: Path, cli) -> None:
    assert cli("train", write_spec(tmp_path, steps=200), "--detach").code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: store.get(job.id).step >= 25, what="training to pass step 25")
    pid = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "train"))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the job to finish")
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, job.error
    assert job.step == 200
    restarts = store.events(job.id, types=["restart"])
    assert len(restarts) == 1 and "137" in restarts[0].data["reason"]
    resumed = store.events(job.id, types=["resumed"])
    assert len(resumed) == 1 and resumed[0].data["step"] >= 20 and resumed[0].data["step"] % 10 == 0
    logs = [e.data["message"] for e in store.events(job.id, types=["log"])]
    assert "re-attached to the running trainer" not in logs  # it was restarted, not re-attached to


def test_stop_then_resume_continues_where_it_stopped(tmp_path: Path, cli) -> None:
    assert cli("train", write_spec(tmp_path, steps=200), "--detach").code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: store.get(job.id).step >= 15, what="training to pass step 15")
    stopped = cli("jobs", "stop", job.id)
    assert stopped.code == 0, stopped.out + stopped.err
    job = store.get(job.id)
    assert job.state is JobState.STOPPED
    ckpts = sorted(p.name for p in (job.folder / "checkpoints").iterdir())
    assert ckpts[-1] == f"step-{job.step:06d}"  # the stop saved a checkpoint at the step it stopped on
    stop_step = job.step
    (state,) = [e.data for e in store.events(job.id, types=["job.state"]) if e.data["to"] == "stopped"]
    assert state["step"] == stop_step > 0 and state["checkpoint"] == f"checkpoints/{ckpts[-1]}"
    again = cli("jobs", "resume", job.id)
    assert again.code == 0, again.out + again.err
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED and job.step == 200
    assert store.events(job.id, types=["resumed"])[0].data["step"] == stop_step
    assert len(store.events(job.id, types=["train.launched"])) == 2
    bad = cli("jobs", "stop", job.id)
    assert bad.code == 2 and "nothing to stop" in bad.err


def runner_killed_mid_training(cli, spec: Path) -> tuple[Store, Any, int]:
    """A detached job past step 10 whose runner was SIGKILLed (its trainer left running): store, job, trainer pid."""
    assert cli("train", spec, "--detach").code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: store.get(job.id).step >= 10, what="training to pass step 10")
    layout = JobLayout(str(job.folder))
    runner_pid = LocalHost().pid(Handle.in_folder(layout.run, "runner"))
    trainer_pid = LocalHost().pid(Handle.in_folder(layout.run, "train"))
    assert runner_pid and trainer_pid
    os.kill(runner_pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(runner_pid), what="the runner to die")
    return store, job, trainer_pid


def test_killed_runner_reattaches_without_second_trainer(tmp_path: Path, cli) -> None:
    store, job, trainer_pid = runner_killed_mid_training(cli, write_spec(tmp_path, steps=200))
    assert store.get(job.id).state is JobState.TRAINING
    result = cli("jobs", "attach", job.id)
    assert result.code == 0, result.out + result.err
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED and job.step == 200
    launched = store.events(job.id, types=["train.launched"])
    assert len(launched) == 1 and launched[0].data["pid"] == trainer_pid
    assert store.events(job.id, types=["resumed"]) == []  # training was never restarted
    logs = [e.data["message"] for e in store.events(job.id, types=["log"])]
    assert "re-attached to the running trainer" in logs


def test_bundle_any_checkpoint_and_logs(tmp_path: Path, cli) -> None:
    assert cli("train", write_spec(tmp_path)).code == 0
    job = only_job(Store())
    result = cli("bundle", job.id, "--checkpoint", "20")
    assert result.code == 0
    path = Path(result.out.strip().splitlines()[-1])
    assert path.name.endswith("-step000020.zip") and verify_bundle(path) == []
    with zipfile.ZipFile(path) as zf:
        assert "mascot-step000020.safetensors" in zf.namelist()
        assert json.loads(zf.read("metadata.json"))["steps"] == 20
    missing = cli("bundle", job.id, "--checkpoint", "7")
    assert missing.code == 2 and "no LoRA" in missing.err
    logs = cli("jobs", "logs", job.id)
    assert '"event": "done"' in logs.out


@pytest.mark.parametrize("action", ["restart", "fail"])
def test_hung_trainer_is_detected_and_handled(tmp_path: Path, cli, action: str) -> None:
    spec = write_spec(tmp_path, monitor={"stall_minutes": 0.15, "on_stall": action, "max_restarts": 5}, steps=200)
    assert cli("train", spec, "--detach").code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: store.get(job.id).step >= 15, what="training to pass step 15")
    pid = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "train"))
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive but making no progress: a hang
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the job to end")
    job = store.get(job.id)
    stalls = store.events(job.id, types=["stall.detected"])
    assert stalls and stalls[0].data["reason"] == "no_progress" and stalls[0].data["action"] == action
    if action == "restart":
        assert job.state is JobState.COMPLETED and job.step == 200
        assert store.events(job.id, types=["resumed"])[0].data["step"] >= 10
    else:
        assert job.state is JobState.FAILED and "no training progress" in (job.error or "")
    handle = Handle.in_folder(JobLayout(str(job.folder)).run, "train")
    pid = LocalHost().pid(handle)
    alive = LocalHost().signal(handle, 0)
    info = Path(f"/proc/{pid}/cmdline").read_bytes() if alive else b""
    assert not alive, (pid, info, Path(f"/proc/{pid}/stat").read_text() if alive else "")  # nothing left running


def test_unreachable_base_model_fails_clearly_instead_of_hanging(tmp_path: Path, cli) -> None:
    spec = yaml.safe_load(write_spec(tmp_path).read_text())
    spec["base_model"] = "flux-dev"
    spec["engine"] = "builtin"
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(spec))
    result = cli("train", tmp_path / "real.yaml")
    assert result.code == 1
    job = only_job(Store())
    assert job.state is JobState.FAILED
    assert "could not fetch black-forest-labs/FLUX.1-dev" in (job.error or "")
    assert "local diffusers folder" in (job.error or "")


HANG_AFTER = """import sys, time
from loraflow.trainer.__main__ import main
main(sys.argv[1:])
sys.stdout.flush()
time.sleep(3600)  # a teardown that never returns (a CUDA context, a stuck thread)
"""


def test_a_trainer_hung_after_its_lora_is_ended_and_the_job_completes(tmp_path: Path, monkeypatch) -> None:
    """Under `on_stall: fail`, a trainer that wrote its LoRA and said so, then never exited, used to be failed
    as 'no training progress' (or waited on forever); it is ended and the job judged by its outputs."""
    from dataclasses import replace

    from loraflow.engines.builtin import BuiltinEngine
    from loraflow.running.runner import JobRunner
    from loraflow.spec import load_spec

    wrapper = tmp_path / "hang_after.py"
    wrapper.write_text(HANG_AFTER)
    original = BuiltinEngine.command

    def command(self: BuiltinEngine, spec, layout, python):  # the real trainer, then a hang
        real = original(self, spec, layout, python)
        return replace(real, argv=[real.argv[0], str(wrapper), real.argv[-1]])

    monkeypatch.setattr(BuiltinEngine, "command", command)
    store = Store()
    spec = write_spec(tmp_path, monitor={"stall_minutes": 0.5, "on_stall": "fail"}, steps=10)  # 30 s: a busy machine
    job = store.create_job(load_spec(spec))
    assert JobRunner(store, job.id).run() is JobState.COMPLETED
    job = store.get(job.id)
    assert job.step == 10 and Path(job.outputs.lora or "").is_file()
    stalls = [e.data for e in store.events(job.id, types=["stall.detected"])]
    assert [(s["reason"], s["action"]) for s in stalls] == [("no_exit", "end")]
    handle = Handle.in_folder(JobLayout(str(job.folder)).run, "train")
    assert not LocalHost().signal(handle, 0)  # the hung process is gone, not left holding the GPU


def test_a_trainer_that_hangs_after_its_runner_died_is_still_caught(tmp_path: Path, cli) -> None:
    """The trainer's `training` phase line lies behind the offset a new runner continues from: the stall
    detector used to wait for it for ever, so a hang after a re-attach was never noticed (a rented GPU
    billed until the budget ran out). The phase is kept with the offset now."""
    from loraflow.running.runner import JobRunner

    spec = write_spec(tmp_path, monitor={"stall_minutes": 0.15, "on_stall": "fail"}, steps=400)
    store, job, trainer_pid = runner_killed_mid_training(cli, spec)
    os.kill(trainer_pid, signal.SIGSTOP)  # and then the trainer hangs
    assert JobRunner(store, job.id).run() is JobState.FAILED
    job = store.get(job.id)
    assert "no training progress" in (job.error or "")
    assert [e.data["reason"] for e in store.events(job.id, types=["stall.detected"])] == ["no_progress"]
    wait_for(lambda: not pid_alive(trainer_pid), what="the hung trainer to be killed")
