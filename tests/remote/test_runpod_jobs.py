"""Whole jobs on RunPod: the RunPod emulator (driven through the `runpod` SDK) + a real sshd per pod + the
builtin engine. The same runner, lease, budget guard and dead-man switch as on Vast.ai."""

from __future__ import annotations

import os
import signal
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
from loraflow.running.orphans import orphans
from tests.integration.test_local_jobs import only_job, wait_for
from tests.remote.conftest import RunPod, dump, events_of
from tests.remote.test_vast_jobs import remote_spec

# A whole job (two pods' set-up in some) takes minutes on a busy machine; a test cut short leaves its detached
# runner renting on, so these get room rather than the suite's 300 s.
pytestmark = pytest.mark.timeout(900)


def runpod_spec(tmp_path: Path, steps: int = 30, every: int = 10, **compute: Any) -> Path:
    path = remote_spec(tmp_path, steps=steps, every=every)
    data = yaml.safe_load(path.read_text())
    data["compute"].update(provider="runpod", **compute)
    path.write_text(yaml.safe_dump(data))
    return path


def created(runpod: RunPod) -> list[str]:
    return [r for r in runpod.admin("state")["requests"] if r in ("podFindAndDeployOnDemand", "podRentInterruptable")]


def test_runpod_job_end_to_end(tmp_path: Path, cli, runpod: RunPod) -> None:
    """Rent (the cheapest type has no machine left: the next), SSH, train, copy back, release."""
    runpod.admin("faults", {"no_capacity": 1})
    result = cli("train", runpod_spec(tmp_path))
    assert result.code == 0, result.out + result.err
    assert "cheapest fit: RTX 3090" in result.out  # community cloud's $0.22/h (the tiny model asks 24 GB)
    store = Store()
    job = only_job(store)
    assert job.state is JobState.COMPLETED and job.step == 30, dump(job.to_dict())
    assert [d["step"] for d in events_of(store, job.id, "checkpoint.synced")] == [10, 20, 30]
    assert verify_bundle(Path(job.outputs.bundle)) == []
    (lease,) = job.outputs.leases
    assert lease["provider"] == "runpod" and lease["gpu"] != "RTX 3090"  # the second in line
    assert isinstance(lease["instance_id"], str) and lease["instance_id"] in runpod.emulator.terminated
    assert job.cost_usd > 0
    assert abs(job.cost_usd - lease["price_usd_h"] * (lease["ended_at"] - lease["started_at"]) / 3600) < 1e-6
    assert job.lease is None and runpod.pods() == {}
    warnings = [d["message"] for d in events_of(store, job.id, "warning")]
    assert sum("no RTX 3090 left" in w for w in warnings) == 1 and len(created(runpod)) == 2
    assert not runpod.emulator.terminated_by_pod  # released by the runner, not by its dead-man switch


def test_spot_pod_taken_back_mid_training_moves_to_a_new_pod(tmp_path: Path, cli, runpod: RunPod) -> None:
    # 60 steps: still training a few steps after its first checkpoint on a fast machine, done in minutes on a
    # busy one (two pods' set-up).
    spec = runpod_spec(tmp_path, steps=60, every=5, runpod={"interruptible": True})
    assert cli("train", "--detach", spec).code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: bool(events_of(store, job.id, "checkpoint.synced")), timeout=600, what="a checkpoint")
    first = store.get(job.id).lease["instance_id"]
    assert runpod.pods()[first]["interruptible"]
    runpod.admin(f"pods/{first}/fail", {"kind": "exited"})  # RunPod stops a spot pod it takes back
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=800, what="the job to end")
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED and job.step == 60, dump([e.data for e in store.events(job.id)][-20:])
    (lost,) = events_of(store, job.id, "host.lost")
    assert "exited" in dump(lost)
    leases = job.outputs.leases
    assert leases[0]["instance_id"] == first and len(leases) == 2
    assert events_of(store, job.id, "resumed")[-1]["step"] >= 5  # from the copied checkpoint, not step 0
    assert first in runpod.emulator.terminated and runpod.pods() == {}  # the stopped pod released too


def test_budget_cap_stops_with_a_checkpoint_and_releases_the_pod(tmp_path: Path, cli, runpod: RunPod) -> None:
    spec = runpod_spec(tmp_path, steps=150, every=5, gpu={"names": ["H100 SXM"]}, runpod={"cloud": "secure"})
    data = yaml.safe_load(spec.read_text())
    data["budget"] = {"max_usd": 0.004}  # $2.99/h: the cap is hit within seconds
    spec.write_text(yaml.safe_dump(data))
    refused = cli("train", spec)
    assert refused.code == 2 and "over budget.max_usd" in refused.err + refused.out
    assert runpod.pods() == {} and not Store().list_jobs()
    result = cli("train", "--force", spec)
    store = Store()
    job = only_job(store)
    assert job.state is JobState.STOPPED_BUDGET and result.code == 1, dump(job.to_dict())
    assert job.cost_usd >= 0.004 and job.lease is None and runpod.pods() == {}
    (end,) = events_of(store, job.id, "job.stopped_budget")
    assert 0 < job.step < 150 and (job.folder / end["checkpoint"] / "meta.json").exists()


def test_killed_orchestrator_the_pod_terminates_itself_and_the_job_resumes(tmp_path: Path, cli, runpod: RunPod) -> None:
    spec = runpod_spec(tmp_path, steps=20_000, every=5, heartbeat_minutes=0.5)  # it outlives the test
    assert cli("train", "--detach", spec).code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: bool(events_of(store, job.id, "checkpoint.synced")), timeout=600, what="a synced checkpoint")
    (pod,) = list(runpod.pods())
    runner = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "runner"))
    assert runner is not None
    os.kill(runner, signal.SIGKILL)  # nobody touches the heartbeat now
    wait_for(lambda: not pid_alive(runner), what="the runner to die")
    wait_for(lambda: runpod.pods() == {}, timeout=300, what="the pod to terminate itself")
    assert runpod.emulator.terminated_by_pod == {pod}  # with its own pod-scoped RUNPOD_API_KEY
    assert store.get(job.id).state is JobState.TRAINING  # nobody told the store: the next runner finds out
    wait_for(lambda: orphans(store) == [job.id], what="the job to be seen as an orphan")
    assert cli("jobs", "list").code == 0  # adopts it: the pod is gone, a new one is rented, training resumes
    wait_for(lambda: bool(events_of(store, job.id, "resumed")), timeout=600, what="training to resume")
    assert events_of(store, job.id, "resumed")[0]["step"] >= 5 and len(created(runpod)) == 2
    assert cli("jobs", "stop", job.id).code == 0
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the resumed job to stop")
    assert runpod.pods() == {}
