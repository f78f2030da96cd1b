"""The rented host's dead-man switch (providers/vast_watch.py) against the Vast.ai emulator, which runs
the create call's `onstart` with the container's CONTAINER_ID and CONTAINER_API_KEY."""

from __future__ import annotations

import io
import os
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost, pid_alive
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Job, Store
from loraflow.layout import JobLayout
from loraflow.running.orphans import orphans
from tests.integration.test_local_jobs import only_job, wait_for
from tests.remote.conftest import Vast, events_of
from tests.remote.test_vast_jobs import remote_spec


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, object]]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from loraflow.publish.s3 import client

    c = client(endpoint)
    c.create_bucket(Bucket="loras")
    try:
        yield endpoint, c
    finally:
        server.stop()


def kill_the_orchestrator(tmp_path: Path, cli, vast: Vast, **extra: Any) -> tuple[Store, Job, int]:
    """A rented job (heartbeat window 30 s) whose runner is SIGKILLed once a checkpoint was copied back: the
    orchestrator dies without a word and nobody touches the host's heartbeat any more. (store, job, instance)."""
    path = remote_spec(tmp_path, steps=20_000, every=50, **extra)  # minutes of training: it outlives the test
    data = yaml.safe_load(path.read_text())
    data["compute"]["heartbeat_minutes"] = 0.5
    path.write_text(yaml.safe_dump(data))
    assert cli("train", path, "--detach").code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: bool(events_of(store, job.id, "checkpoint.synced")), timeout=600, what="a synced checkpoint")
    (instance,) = [int(i) for i in vast.instances()]
    runner = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "runner"))
    assert runner is not None
    os.kill(runner, signal.SIGKILL)
    wait_for(lambda: not pid_alive(runner), what="the runner to die")
    return store, job, instance


@pytest.mark.timeout(1500)  # a busy 2-core machine takes minutes to its first copied checkpoint
def test_killed_orchestrator_the_host_saves_pushes_and_destroys_itself(tmp_path: Path, cli, vast: Vast, s3) -> None:
    endpoint, bucket = s3
    target = {"type": "s3", "bucket": "loras", "prefix": "runs", "endpoint_url": endpoint}
    store, job, instance = kill_the_orchestrator(tmp_path, cli, vast, publish={"targets": [target]})
    vast.admin("faults/", {"rate_limit": 2})  # and the API turns the host's first two destroy calls away
    synced = max(d["step"] for d in events_of(store, job.id, "checkpoint.synced"))
    wait_for(lambda: vast.instances() == {}, timeout=300, what="the instance to destroy itself")
    assert instance in vast.emulator.destroyed_by_instance  # with its own CONTAINER_API_KEY
    destroys = [r for r in vast.emulator.requests if r == ("DELETE", f"/api/v0/instances/{instance}/")]
    assert len(destroys) == 3  # refused twice (429), called again each time, then destroyed
    assert store.get(job.id).state is JobState.TRAINING  # nobody told the store: the next runner finds out
    key = f"runs/{job.id}/rescue/{instance}/checkpoint.tar"  # this lease's own key
    body = bucket.get_object(Bucket="loras", Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = tar.getnames()
    (folder,) = {n.split("/")[0] for n in names}
    rescued = int(folder.split("-")[1])
    assert f"{folder}/meta.json" in names and rescued > synced  # saved on SIGTERM, after the last copy
    # A user looks: the orphan is adopted; its runner finds the host gone, takes the rescue checkpoint back
    # from the bucket and resumes from it on a new host, not from the last one copied before the death.
    wait_for(lambda: orphans(store) == [job.id], what="the job to be seen as an orphan")
    assert cli("jobs", "list").code == 0
    wait_for(lambda: bool(events_of(store, job.id, "resumed")), timeout=300, what="training to resume")
    taken = [d["step"] for d in events_of(store, job.id, "checkpoint.synced") if d.get("rescued")]
    assert taken == [rescued]
    assert (job.folder / "checkpoints" / folder / "meta.json").is_file()
    assert events_of(store, job.id, "resumed")[0]["step"] == rescued
    assert events_of(store, job.id, "restart") == []  # a new host's first launch is no restart of the lost one
    assert bucket.list_objects_v2(Bucket="loras", Prefix=key).get("KeyCount") == 0  # served: not fetched again
    assert cli("jobs", "stop", job.id).code == 0
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the resumed job to stop")
    secret_free = str([e.data for e in store.events(job.id)])
    assert "X-Amz-Signature" not in secret_free and "upload_url" not in secret_free


def test_the_instance_key_acts_on_its_own_instance_only(vast: Vast) -> None:
    import httpx

    from loraflow.providers.vast_client import VastClient

    client = VastClient(vast.key, vast.url)
    ids, keys = [], []
    for offer in client.search_offers({"rentable": {"eq": True}})[:2]:
        answer = client.create_instance(int(offer["id"]), {"image": "x", "disk": 10, "label": "loraflow:t"})
        ids.append(int(answer["new_contract"]))
        keys.append(answer["instance_api_key"])
    mine = {"Authorization": f"Bearer {keys[0]}"}
    other = httpx.delete(f"{vast.url}/api/v0/instances/{ids[1]}/", headers=mine)
    listing = httpx.get(f"{vast.url}/api/v1/instances/", headers=mine)
    assert other.status_code == 403 and listing.status_code == 403
    assert httpx.delete(f"{vast.url}/api/v0/instances/{ids[0]}/", headers=mine).status_code == 200
    assert vast.emulator.destroyed_by_instance == {ids[0]}
    client.destroy_instance(ids[1])


class LeaseStub:
    """What take_back_rescue asks of a lease: the job's lease history, where a lease's rescue object is,
    the job's folders, an event sink."""

    def __init__(self, tmp_path: Path, endpoint: str) -> None:
        from types import SimpleNamespace

        from loraflow.spec import S3Target

        self.local = JobLayout(str(tmp_path / "job"))
        Path(self.local.run).mkdir(parents=True)
        self.target = S3Target(type="s3", bucket="loras", prefix="runs", endpoint_url=endpoint)
        self.events: list[tuple[str, dict]] = []
        self.job_id = "job1"
        job = SimpleNamespace(outputs=SimpleNamespace(leases=[{"instance_id": 7}]))
        self.store = SimpleNamespace(get=lambda job_id: job)

    def rescue_object(self, lease: dict) -> tuple[object, str]:
        return self.target, f"runs/job1/rescue/{lease['instance_id']}/checkpoint.tar"

    def emit(self, type_: str, data: dict) -> None:
        self.events.append((type_, data))


def checkpoint(root: Path, step: int) -> Path:
    import torch

    from loraflow.trainer.checkpoint import save_checkpoint

    weights = {"a": torch.ones(2, 2)}
    return save_checkpoint(root, step, weights, {"step": step}, weights, {"ss_steps": str(step)}, keep_last=10)


def put_tar(bucket, tmp_path: Path, members: dict[str, Path]) -> None:
    tar_path = tmp_path / "up.tar"
    with tarfile.open(tar_path, "w") as tar:
        for arcname, path in members.items():
            tar.add(path, arcname=arcname)
    bucket.upload_file(str(tar_path), "loras", "runs/job1/rescue/7/checkpoint.tar")


def test_a_rescue_checkpoint_is_taken_back_only_when_newer_whole_and_inside_its_folder(tmp_path: Path, s3) -> None:
    from loraflow.running.lease_files import take_back_rescue

    endpoint, bucket = s3
    lease = LeaseStub(tmp_path, endpoint)
    take_back_rescue(lease)  # nothing pushed: nothing to say
    assert lease.events == []
    mine = Path(lease.local.checkpoints)
    checkpoint(mine, 20)
    host = tmp_path / "host"
    put_tar(bucket, tmp_path, {"step-000010": checkpoint(host, 10)})
    take_back_rescue(lease)  # older than ours: left alone
    assert sorted(p.name for p in mine.iterdir()) == ["step-000020"] and lease.events == []
    damaged = checkpoint(host, 30)
    (damaged / "lora.safetensors").write_bytes(b"not the saved bytes")
    put_tar(bucket, tmp_path, {"step-000030": damaged})
    take_back_rescue(lease)
    assert "unusable" in lease.events[-1][1]["message"] and not (mine / "step-000030").exists()
    put_tar(bucket, tmp_path, {"../../escape": checkpoint(host, 40)})  # a hostile host's tar
    take_back_rescue(lease)
    assert lease.events[-1][0] == "warning" and not (tmp_path / "escape").exists()
    put_tar(bucket, tmp_path, {"step-50": checkpoint(host, 45)})  # not a name the trainer would resume from
    take_back_rescue(lease)
    assert "unusable" in lease.events[-1][1]["message"] and not (mine / "step-50").exists()
    put_tar(bucket, tmp_path, {"step-000050": checkpoint(host, 50)})
    take_back_rescue(lease)
    assert (mine / "step-000050" / "meta.json").is_file()
    assert ("checkpoint.synced", {"step": 50, "path": "checkpoints/step-000050", "synced": True, "rescued": True}) in (
        lease.events
    )
    assert bucket.list_objects_v2(Bucket="loras", Prefix="runs/job1/rescue/").get("KeyCount") == 0


@pytest.mark.timeout(1500)
def test_an_orchestrator_back_after_the_switch_fired_moves_on_instead_of_stopping(
    tmp_path: Path, cli, vast: Vast
) -> None:
    """The runner is frozen past the heartbeat window, the host's watcher stops the trainer (it saves)
    and cannot destroy itself yet (the API refuses); the runner wakes up to a trainer that exited as
    'stopped'. Nobody asked for a stop: that used to end the job `stopped`, waiting on a user. It moves to
    a new host from the checkpoint the watcher's stop saved."""
    path = remote_spec(tmp_path, steps=20_000, every=50)
    data = yaml.safe_load(path.read_text())
    data["compute"]["heartbeat_minutes"] = 0.5
    path.write_text(yaml.safe_dump(data))
    assert cli("train", path, "--detach").code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: bool(events_of(store, job.id, "checkpoint.synced")), timeout=600, what="a synced checkpoint")
    lease = store.get(job.id).lease or {}
    host_run = JobLayout(lease["root"]).run
    fired = Path(lease["root"]).parents[1] / ".loraflow-watch" / "fired"
    vast.admin("faults/", {"refuse_self_destroy": True})
    runner = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "runner"))
    assert runner is not None
    os.kill(runner, signal.SIGSTOP)  # a laptop asleep: nobody touches the heartbeat
    try:
        wait_for(fired.exists, timeout=300, what="the watcher to fire")
        wait_for(Path(Handle.in_folder(host_run, "train").exit_file).exists, what="the trainer to save and exit")
    finally:
        os.kill(runner, signal.SIGCONT)  # and the laptop wakes up while the host still stands
    wait_for(lambda: bool(events_of(store, job.id, "resumed")) or store.get(job.id).state not in ACTIVE,
             timeout=300, what="the job to resume elsewhere (or end)")
    assert store.get(job.id).state is JobState.TRAINING, store.get(job.id).state
    (lost,) = events_of(store, job.id, "host.lost")
    assert "dead-man switch fired" in lost["reason"] and "no heartbeat" in lost["reason"]
    saved = max(d["step"] for d in events_of(store, job.id, "checkpoint.synced"))
    assert events_of(store, job.id, "resumed")[0]["step"] == saved  # the watcher's stop saved it; we copied it
    vast.admin("faults/", {"refuse_self_destroy": False})
    assert cli("jobs", "stop", job.id).code == 0
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the job to stop")
