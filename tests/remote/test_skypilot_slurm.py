"""Opt-in: a whole loraflow job through a real SkyPilot on a real (local) Slurm cluster.

`compute.provider: skypilot, compute.infra: slurm/lfslurm`: SkyPilot's own API server and Slurm code launch the
cluster (sbatch of an allocation with the job's GPU, SkyPilot's runtime set up in it, loraflow's setup and
watcher job run), loraflow reaches the allocation over SSH the way SkyPilot's own `ssh <cluster>` does (its
API server's websocket proxy to `srun ... sshd -i` inside the allocation), trains tiny-flux there, copies the
checkpoints back and downs the cluster (the allocation cancelled). The cluster is testing/local_slurm.py's:
Debian's slurm and munge daemons and an OpenSSH login node on loopback, one fake H100.

Run with `make test-slurm` (root; it installs the packages with `make slurm-deps`). Several minutes: SkyPilot
installs its runtime into the allocation from PyPI. Skipped with the reason where anything is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.testing.containers import kill_marked
from loraflow.testing.local_slurm import CLUSTER, LocalSlurm, missing, start_local_slurm
from tests.conftest import REPO
from tests.integration.test_local_jobs import only_job
from tests.remote.conftest import dump, events_of
from tests.remote.test_vast_jobs import remote_spec

OPT_IN = "LORAFLOW_SLURM_E2E"
TRAIN_PYTHON = os.environ.get("LORAFLOW_SLURM_TRAIN_PYTHON", str(REPO / ".venv" / "bin" / "python"))


def _why_not() -> str | None:
    if not os.environ.get(OPT_IN):
        return f"opt-in ({OPT_IN}=1, or `make test-slurm`): starts Slurm daemons and SkyPilot, minutes"
    if importlib.util.find_spec("sky") is None:
        return "needs SkyPilot: run it in .venv-sky (make test-slurm)"
    if (reason := missing()) is not None:
        return reason
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 46580)) == 0:
            return "SkyPilot's local API server port 127.0.0.1:46580 is taken: another SkyPilot runs here"
    probe = subprocess.run([TRAIN_PYTHON, "-c", "import torch, loraflow"], capture_output=True)
    if probe.returncode != 0:
        return f"the trainer's Python {TRAIN_PYTHON} cannot import torch and loraflow (make venv)"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def sky_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """SkyPilot's own CLI (beside this Python), with this test's environment (its HOME)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "sky"), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def slurm(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalSlurm]:
    """The cluster, SkyPilot pointed at it (its state and API server under a throwaway HOME), both gone after."""
    cluster = start_local_slurm()
    try:
        monkeypatch.setenv("HOME", str(cluster.client_home))
        monkeypatch.setenv("TMPDIR", str(cluster.root / "tmp"))
        monkeypatch.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
        monkeypatch.setenv("LORAFLOW_VAST_POLL_S", "2")
        check = sky_cli("check", "slurm")
        assert f"{CLUSTER}: enabled" in re.sub(r"\x1b\[[0-9;]*m", "", check.stdout), check.stdout + check.stderr
        yield cluster
    finally:
        # a failed job's runner may still hold its lease: it goes first, then whatever SkyPilot still has up
        kill_marked(f"LORAFLOW_HOME={os.environ['LORAFLOW_HOME']}")
        sky_cli("down", "--all", "--yes", timeout=300)
        sky_cli("api", "stop", timeout=120)
        cluster.stop()


# the allocation is on this machine: its Python has loraflow and torch, nothing to install
COMPUTE = {"provider": "skypilot", "infra": f"slurm/{CLUSTER}", "gpu": {"names": ["H100"]}, "python": TRAIN_PYTHON,
           "setup": "", "max_retries": 0, "ready_timeout_s": 1200}


@pytest.mark.timeout(1800)
def test_a_job_trains_on_a_slurm_allocation_launched_by_skypilot(tmp_path: Path, cli, slurm: LocalSlurm) -> None:
    started = time.monotonic()
    result = cli("train", remote_spec(tmp_path, steps=20, every=10, compute=COMPUTE))
    took = time.monotonic() - started
    assert result.code == 0, result.out + result.err
    store = Store()
    job = only_job(store)
    assert job.state is JobState.COMPLETED and job.step == 20, dump(job.to_dict())
    (created,) = events_of(store, job.id, "host.created")
    cluster = created["instance_id"]
    assert cluster.startswith(f"loraflow-{job.id}--")
    # the partition (sinfo marks the default one), unpriced: 0 unless ~/.sky/config.yaml prices it
    assert created["gpu"].startswith("1x H100 (slurm/debug") and created["price_usd_h"] == 0
    (acquired,) = events_of(store, job.id, "host.acquired")
    # The host is named by the login node's address, whose sshd lets in SkyPilot's login key only: loraflow's
    # key got in through SkyPilot's route (its API server's websocket proxy, `srun ... sshd -i` in the
    # allocation), as the login account, which trained in its own home.
    assert acquired["provider"] == "skypilot" and acquired["host"] == f"127.0.0.1:{slurm.ssh_port}"
    assert (slurm.root / "home" / "loraflow" / job.id).is_dir()
    assert [d["step"] for d in events_of(store, job.id, "checkpoint.synced")] == [10, 20]
    (released,) = events_of(store, job.id, "host.released")
    assert released["instance_id"] == cluster
    # Downed through SkyPilot: no cluster left in its table, the allocation cancelled in Slurm's
    status = sky_cli("status", "--refresh")
    assert cluster not in status.stdout, status.stdout
    assert slurm.jobs() == "", slurm.jobs()
    print(f"\nslurm end-to-end: the whole job took {took:.0f} s")  # recorded in docs/remote.md
