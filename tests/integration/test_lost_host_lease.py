"""A rented host billed as long as it really was: the orchestrator dies (SIGKILL), the host's dead-man switch
destroys it, and somebody looks at the job only much later. The lease recorded then must end when the host
did (its last heartbeat plus the switch's window), within 10 % of what the Vast.ai emulator's meter billed,
not at the moment of the look (before: 210.5 s recorded against 58.3 s billed when looked at 150 s later).
A lease we destroy ourselves ends when the API took the destroy, within a few percent of the meter."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loraflow.jobs.costs import lease_cost, lease_seconds
from loraflow.jobs.states import ACTIVE
from loraflow.running.orphans import orphans
from tests.integration.test_local_jobs import wait_for
from tests.remote.conftest import Vast, events_of, vast  # noqa: F401 - the emulator fixture
from tests.remote.test_vast_watch import kill_the_orchestrator

LATE_S = 60  # at least this long after the host is gone the user first looks


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "shared-models"))


def _close(recorded: float, billed: float, within: float) -> bool:
    return abs(recorded - billed) <= within * billed


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_lost_hosts_lease_ends_with_the_host_however_late_one_looks(tmp_path: Path, cli, vast: Vast) -> None:  # noqa: F811
    store, job, instance = kill_the_orchestrator(tmp_path, cli, vast)
    wait_for(lambda: vast.instances() == {}, timeout=300, what="the instance to destroy itself")
    billed = vast.emulator.meter(instance)
    assert billed.ended is not None and instance in vast.emulator.destroyed_by_instance
    # The user looks late (a laptop opened the next morning, shortened): the look itself is the scenario. Late
    # enough that a lease ended at the look would be a quarter or more over the meter.
    late = max(LATE_S, billed.seconds / 4)
    wait_for(lambda: time.time() > billed.ended + late, timeout=late + 60, what="a late look")
    wait_for(lambda: orphans(store) == [job.id], what="the job to be seen as an orphan")
    assert cli("jobs", "list").code == 0  # adopts it: its runner finds the host gone and books the lease
    wait_for(lambda: bool(events_of(store, job.id, "host.released")), timeout=300, what="the lost lease booked")
    (lost,) = store.get(job.id).outputs.leases[:1]
    assert lost["instance_id"] == instance
    print(f"lost lease: recorded {lease_seconds(lost):.1f} s, billed {billed.seconds:.1f} s, looked {late:.0f} s late")
    assert _close(lease_seconds(lost), billed.seconds, 0.10), (lease_seconds(lost), billed.seconds)
    assert _close(lease_cost(lost), billed.usd, 0.10), (lease_cost(lost), billed.usd)
    assert lost["ended_by"].startswith("dead-man switch")
    released = events_of(store, job.id, "host.released")[0]
    assert _close(released["seconds"], billed.seconds, 0.10)  # what the user is told is the same
    # The job moved on to a new host; stopping it there releases that one by our own destroy.
    wait_for(lambda: bool(events_of(store, job.id, "resumed")), timeout=300, what="training to resume")
    assert cli("jobs", "stop", job.id).code == 0
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the resumed job to stop")
    ended = store.get(job.id)
    _first, second = ended.outputs.leases
    metered = vast.emulator.meter(int(second["instance_id"]))
    assert _close(lease_seconds(second), metered.seconds, 0.03), (lease_seconds(second), metered.seconds)
    assert second["ended_by"] == "destroy"
    assert _close(ended.cost_usd, billed.usd + metered.usd, 0.10), (ended.cost_usd, billed.usd, metered.usd)
