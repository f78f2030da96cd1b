"""Whole jobs on rented machines: the Vast.ai emulator + a real sshd per instance + the builtin engine."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from loraflow.hosts.local import pid_alive
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.publish.bundle import verify_bundle
from tests.conftest import EXAMPLES
from tests.integration.test_local_jobs import only_job, wait_for
from tests.remote.conftest import Vast, dump, events_of, ssh_compute


def remote_spec(tmp_path: Path, steps: int = 30, every: int = 10, **extra: Any) -> Path:
    spec = {
        "name": "remote",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "tiny-flux",
        "training": {"steps": steps},
        "sampling": {"prompts": ["[trigger] on the moon"], "every_n_steps": 0},
        "checkpointing": {"every_n_steps": every, "keep_last": 20},
        # The "rented" machine is this one, so its Python is ours; nothing to install.
        "compute": {"provider": "vastai", "python": sys.executable, "setup": "", "max_retries": 2},
        # The result check on the host (a process that imports torch, per job) has its own tests in
        # test_remote_scoring.py; these jobs are about renting, following and recovering.
        "evaluation": {"enabled": False},
        **extra,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def created(vast: Vast) -> list[tuple[str, str]]:
    return [r for r in vast.emulator.requests if r[0] == "PUT" and r[1].startswith("/api/v0/asks/")]


def test_rented_job_end_to_end(tmp_path: Path, cli, vast: Vast) -> None:
    """Also: the two best offers are snatched before create, and the API answers a storm of 429s."""
    vast.admin("faults/", {"snatch": 2, "rate_limit": 6})
    secret = "hf_" + "canary" * 6
    os.environ["HF_TOKEN"] = secret  # restored by the home fixture's monkeypatch.delenv
    try:
        result = cli("train", remote_spec(tmp_path))
    finally:
        os.environ.pop("HF_TOKEN", None)
    assert result.code == 0, result.out + result.err
    assert "cheapest fit: RTX 3090" in result.out
    store = Store()
    job = only_job(store)
    assert job.state is JobState.COMPLETED and job.step == 30, dump(job.to_dict())
    types = [e.type for e in store.events(job.id)]
    for expected in ("host.created", "host.acquired", "progress", "checkpoint.synced", "cost", "host.released"):
        assert expected in types, expected
    synced = [d["step"] for d in events_of(store, job.id, "checkpoint.synced")]
    assert synced == [10, 20, 30]
    assert all((job.folder / f"checkpoints/step-{s:06d}/meta.json").exists() for s in synced)
    assert verify_bundle(Path(job.outputs.bundle)) == []
    (lease,) = job.outputs.leases
    assert (
        lease["gpu"] == "RTX 4090" and lease["price_usd_h"] > 0
    )  # third in line after two snatched and lease["ended_at"] > lease["started_at"]
    assert (
        job.cost_usd > 0
        and abs(job.cost_usd - lease["price_usd_h"] * (lease["ended_at"] - lease["started_at"]) / 3600) < 1e-6
    )
    assert job.lease is None and vast.instances() == {}
    warnings = [d["message"] for d in events_of(store, job.id, "warning")]
    assert sum("was taken" in w for w in warnings) == 2
    assert len(created(vast)) == 3  # two snatched, the third rented
    # The token reached the trainer's environment only: not the store, the job folder or the remote files.
    everything = dump([e.data for e in store.events(job.id)]) + dump(job.to_dict())
    assert secret not in everything
    for path in job.folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_instance_destroyed_mid_training_moves_to_a_new_one(tmp_path: Path, cli, vast: Vast) -> None:
    # Long enough that the instance is still training when it is destroyed (60 steps could all but finish first).
    result = cli("train", "--detach", remote_spec(tmp_path, steps=150, every=10))
    assert result.code == 0, result.out + result.err
    store = Store()
    job = only_job(store)
    wait_for(lambda: any(d["step"] >= 20 for d in events_of(store, job.id, "checkpoint.synced")), what="a checkpoint")
    first = store.get(job.id).lease["instance_id"]
    vast.admin(f"instances/{first}/fail", {"kind": "gone"})
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the job to end")
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, dump(job.to_dict()) + dump([e.data for e in store.events(job.id)][-20:])
    assert job.step == 150
    lost = events_of(store, job.id, "host.lost")
    assert len(lost) == 1
    leases = job.outputs.leases
    assert leases[0]["instance_id"] == first and len(leases) == 2
    resumed = events_of(store, job.id, "resumed")
    assert resumed and resumed[-1]["step"] >= 20  # from the copied checkpoint, not step 0
    assert vast.instances() == {}


def test_killed_orchestrator_reattaches_without_second_rental(tmp_path: Path, cli, vast: Vast) -> None:
    result = cli("train", "--detach", remote_spec(tmp_path, steps=120, every=60))
    assert result.code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: store.get(job.id).step >= 15, what="training under way")
    runner_pid = int((job.folder / "run" / "runner.pid").read_text())
    os.kill(runner_pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(runner_pid), what="the runner to die")
    # The "remote" trainer is a process on this machine: hold it still so the new runner must find it running.
    trainer_pid = int(Path(store.get(job.id).lease["root"], "run", "train.pid").read_text())
    os.kill(trainer_pid, signal.SIGSTOP)
    launched_before = len(events_of(store, job.id, "train.launched"))
    from loraflow.running.control import start_runner

    try:
        start_runner(job.id)
        wait_for(
            lambda: any("re-attached" in d.get("message", "") for d in events_of(store, job.id, "log")),
            what="the new runner to re-attach",
        )
    finally:
        os.kill(trainer_pid, signal.SIGCONT)
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the job to end")
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED and job.step == 120
    assert len(created(vast)) == 1  # no second rental
    assert len(events_of(store, job.id, "train.launched")) == launched_before  # training not restarted
    assert not events_of(store, job.id, "resumed")


def test_budget_cap_stops_with_checkpoint_and_resumes_with_more(tmp_path: Path, cli, vast: Vast) -> None:
    spec = remote_spec(
        tmp_path,
        steps=150,
        every=5,
        budget={"max_usd": 0.004},
    )
    data = yaml.safe_load(spec.read_text())
    data["compute"]["gpu"] = {"names": ["H100 SXM"]}  # $1.65/h: the cap is hit within seconds
    spec.write_text(yaml.safe_dump(data))
    refused = cli("train", spec)
    assert refused.code == 2 and "over budget.max_usd" in refused.err + refused.out
    assert vast.instances() == {} and not Store().list_jobs()
    result = cli("train", "--force", spec)
    store = Store()
    job = only_job(store)
    assert job.state is JobState.STOPPED_BUDGET, dump(job.to_dict())
    assert result.code == 1
    types = [e.type for e in store.events(job.id)]
    assert "budget.warning" in types and "job.stopped_budget" in types
    assert job.cost_usd >= 0.004 and job.lease is None and vast.instances() == {}
    assert list((job.folder / "checkpoints").glob("step-*/meta.json"))
    # The cheapest H100 is one GPU of an 8-GPU server (gpu_frac 0.125, as Vast offers most of them): it
    # was rented, and it trains (here and after the resume).
    rented = next(o for o in vast.emulator.offers if o["id"] == job.outputs.leases[0]["offer_id"])
    assert rented["gpu_frac"] == 0.125 and rented["num_gpus"] == 1
    stopped_at = job.step
    assert 0 < stopped_at < 150
    (end,) = events_of(store, job.id, "job.stopped_budget")
    assert end["step"] == stopped_at and (job.folder / end["checkpoint"] / "meta.json").exists()
    resumed = cli("jobs", "resume", job.id, "--budget", "5")
    assert resumed.code == 0, resumed.out + resumed.err
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED and job.step == 150
    assert job.spec["budget"]["max_usd"] == 5
    assert events_of(store, job.id, "resumed")[-1]["step"] >= stopped_at - 5
    assert vast.instances() == {}


def test_own_machine_over_ssh(tmp_path: Path, cli, sshd) -> None:
    path = remote_spec(tmp_path, steps=20, every=10)
    data = yaml.safe_load(path.read_text())
    data["compute"] = ssh_compute(sshd)
    path.write_text(yaml.safe_dump(data))
    result = cli("train", path)
    assert result.code == 0, result.out + result.err
    store = Store()
    job = only_job(store)
    assert job.state is JobState.COMPLETED and job.step == 20 and job.cost_usd == 0
    assert (sshd.home / "work" / job.id / "checkpoints" / "step-000020" / "meta.json").exists()
    assert [d["step"] for d in events_of(store, job.id, "checkpoint.synced")] == [10, 20]
    assert (job.folder / "known_hosts").exists() or (job.folder / "run" / "known_hosts").exists()
