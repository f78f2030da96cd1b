"""The rented host's dead-man switch (providers/vast_watch.py) against the Vast.ai emulator, which runs
the create call's `onstart` with the container's CONTAINER_ID and CONTAINER_API_KEY."""

from __future__ import annotations

import io
import os
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost, pid_alive
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
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


def test_killed_orchestrator_the_host_saves_pushes_and_destroys_itself(tmp_path: Path, cli, vast: Vast, s3) -> None:
    endpoint, bucket = s3
    path = remote_spec(tmp_path, steps=5000, every=5)
    data = yaml.safe_load(path.read_text())
    data["compute"]["heartbeat_minutes"] = 0.5
    data["publish"] = {"targets": [{"type": "s3", "bucket": "loras", "prefix": "runs", "endpoint_url": endpoint}]}
    path.write_text(yaml.safe_dump(data))
    assert cli("train", path, "--detach").code == 0
    store = Store()
    job = only_job(store)
    wait_for(lambda: bool(events_of(store, job.id, "checkpoint.synced")), timeout=300, what="a synced checkpoint")
    (instance,) = [int(i) for i in vast.instances()]
    runner = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "runner"))
    assert runner is not None
    os.kill(runner, signal.SIGKILL)  # the orchestrator dies without a word; nobody touches the heartbeat now
    wait_for(lambda: not pid_alive(runner), what="the runner to die")
    synced = max(d["step"] for d in events_of(store, job.id, "checkpoint.synced"))
    wait_for(lambda: vast.instances() == {}, timeout=300, what="the instance to destroy itself")
    assert instance in vast.emulator.destroyed_by_instance  # with its own CONTAINER_API_KEY
    assert store.get(job.id).state is JobState.TRAINING  # nobody told the store: the next runner finds out
    body = bucket.get_object(Bucket="loras", Key=f"runs/{job.id}/rescue/checkpoint.tar")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = tar.getnames()
    (folder,) = {n.split("/")[0] for n in names}
    assert f"{folder}/meta.json" in names and int(folder.split("-")[1]) >= synced  # saved on SIGTERM
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
