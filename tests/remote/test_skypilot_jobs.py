"""A whole job with `compute.provider: skypilot` through loraflow's real runner, with SkyPilot's answers
stood in (testing/sky_standin.py: each cluster a real sshd on loopback, the task's file mount, setup and run
done as SkyPilot would). What this proves is loraflow's side: the lease recorded under the cluster's name,
the login taken from SkyPilot's handle, training over SSH, the checkpoints copied back, the cluster downed.
SkyPilot's own judgement of the task is tests/remote/test_skypilot.py's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.testing.sky_standin import state
from tests.integration.test_local_jobs import only_job
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
    cluster = f"loraflow-{job.id}"
    (created,) = events_of(store, job.id, "host.created")
    assert created["instance_id"] == cluster and created["gpu"] == "1x A100 (lambda/us-east-1)"  # cheapest job
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
