"""A whole job with `compute.provider: skypilot` through loraflow's real runner, with SkyPilot's answers
stood in (testing/sky_standin.py: each cluster a real sshd on loopback, the task's file mount, setup and run
done as SkyPilot would). What this proves is loraflow's side: the lease recorded under the cluster's name,
the login taken from SkyPilot's handle, training over SSH, the checkpoints copied back, the cluster downed.
SkyPilot's own judgement of the task is tests/remote/test_skypilot.py's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.testing.sky_standin import StandIn, state
from tests.integration.test_local_jobs import only_job, wait_for
from tests.remote.conftest import dump, events_of, need_sshd
from tests.remote.test_vast_jobs import remote_spec


@pytest.fixture
def sky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    need_sshd()
    root = tmp_path / "skypilot"
    monkeypatch.setenv("LORAFLOW_SKYPILOT_API", "loraflow.testing.sky_standin:StandIn")
    monkeypatch.setenv("LORAFLOW_SKY_STANDIN_DIR", str(root))
    monkeypatch.setenv("LORAFLOW_VAST_POLL_S", "0.1")
    return root


@pytest.mark.timeout(900)  # a whole job on two shared cores: about five minutes
def test_skypilot_job_end_to_end(tmp_path: Path, cli, sky: Path) -> None:
    compute = {"provider": "skypilot", "infra": "lambda", "python": sys.executable, "setup": "", "max_retries": 1}
    result = cli("train", remote_spec(tmp_path, compute=compute))
    assert result.code == 0, result.out + result.err
    store = Store()
    job = only_job(store)
    assert job.state is JobState.COMPLETED and job.step == 30, dump(job.to_dict())
    (created,) = events_of(store, job.id, "host.created")
    cluster = created["instance_id"]
    assert cluster.startswith(f"loraflow-{job.id}--") and created["gpu"] == "1x A100 (lambda/us-east-1)"
    assert created["price_usd_h"] == 1.29
    (acquired,) = events_of(store, job.id, "host.acquired")
    assert acquired["provider"] == "skypilot" and acquired["host"].startswith("127.0.0.1:")
    assert [d["step"] for d in events_of(store, job.id, "checkpoint.synced")] == [10, 20, 30]
    (released,) = events_of(store, job.id, "host.released")
    assert released["instance_id"] == cluster
    (lease,) = job.outputs.leases
    assert lease["provider"] == "skypilot" and lease["label"] == f"loraflow:{job.id}"
    seen = state(sky)
    assert seen["clusters"] == {}  # downed, not left to autostop
    assert seen["log"] == [["launch", cluster], ["down", cluster]]
    assert (sky / cluster / "home" / ".loraflow-watch" / "root").read_text().endswith(job.id)  # the watcher armed


@pytest.mark.timeout(1500)  # two clusters, one after the other, on two shared cores
def test_a_cluster_lost_mid_training_moves_the_job_to_a_new_one(tmp_path: Path, cli, sky: Path) -> None:
    compute = {"provider": "skypilot", "infra": "lambda", "python": sys.executable, "setup": "", "max_retries": 1}
    assert cli("train", "--detach", remote_spec(tmp_path, steps=80, every=10, compute=compute)).code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: any(d["step"] >= 10 for d in events_of(store, job.id, "checkpoint.synced")), timeout=900,
             what="a checkpoint copied back")
    first = store.get(job.id).lease["instance_id"]
    StandIn().down(first, why="lost")  # the cloud takes the machine (a spot preemption, a failed host)
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=1200, what="the job to end")
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED and job.step == 80, dump([e.data for e in store.events(job.id)][-20:])
    leases = job.outputs.leases
    assert leases[0]["instance_id"] == first and len(leases) == 2
    assert leases[1]["instance_id"] != first  # a new cluster, with its own host key
    resumed = events_of(store, job.id, "resumed")
    assert resumed and resumed[-1]["step"] >= 10  # from the copied checkpoint, not step 0
    assert state(sky)["clusters"] == {}
