"""S3 away when a job publishes, for real: nothing listens on the target's port (down), or a server takes
every connection and resets it (resetting). The job ends `failed` with the code `publish_unreachable`
(before: `bad_input`, as if the user's target were wrong), the trained LoRA and its bundle are kept, and
once S3 answers again the command the error names finishes the job: published, completed, error cleared."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.publish.bundle import verify_bundle
from tests.integration.test_local_jobs import only_job, wait_for, write_spec


class Resetter:
    """A TCP server on loopback that reads a little of each request and answers with a reset (RST)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.resets = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(1024)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            self.resets += 1

    def close(self) -> None:
        """Stop listening now (a shutdown wakes the accepting thread; a bare close would not free the port)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(params=["down", "resetting"])
def outage(request: pytest.FixtureRequest) -> Iterator[tuple[str, int, Callable[[], None]]]:
    """(kind, port, end): the S3 endpoint's port, with nothing there or with the resetting server; `end`
    frees the port for the real S3 to come back on."""
    if request.param == "resetting":
        server = Resetter()
        yield "resetting", server.port, server.close
        server.close()
        assert server.resets > 0  # the publish really reached it
        return
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield "down", port, lambda: None


@pytest.mark.timeout(600)
def test_s3_outage_at_publish_fails_as_unreachable_and_the_named_fix_finishes_the_job(
    tmp_path: Path, cli, aws: None, outage: tuple[str, int, Callable[[], None]]
) -> None:
    _kind, port, end_outage = outage
    endpoint = f"http://127.0.0.1:{port}"
    path = write_spec(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["publish"] = {"targets": [{"type": "s3", "bucket": "loras", "prefix": "outage", "endpoint_url": endpoint}]}
    path.write_text(yaml.safe_dump(data))
    result = cli("train", path)
    assert result.code != 0
    store = Store()
    job = only_job(store)
    assert job.state is JobState.FAILED, job.state
    error = store.events(job.id, types=["error"])[-1].data
    assert error["code"] == "publish_unreachable", error
    assert "did not answer" in job.error and "bad_input" not in str(error)
    bundle = job.outputs.bundle
    assert bundle and verify_bundle(Path(bundle)) == []  # the trained LoRA is kept, whole
    # S3 is back on the same address; the fix the error names finishes the job.
    from moto.server import ThreadedMotoServer

    from loraflow.publish.s3 import client

    end_outage()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client(endpoint).create_bucket(Bucket="loras")
        fix = error.get("hint") or ""
        assert f"loraflow jobs resume {job.id}" in fix, fix
        refused = cli("publish", job.id)  # the command for completed jobs points to the same way on
        assert refused.code == 2 and f"loraflow jobs resume {job.id}" in refused.out + refused.err
        assert cli("jobs", "resume", job.id).code == 0
        wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300, what="the job to finish")
        done = store.get(job.id)
        assert done.state is JobState.COMPLETED and done.error is None
        listed = client(endpoint).list_objects_v2(Bucket="loras", Prefix=f"outage/{job.id}")
        assert any(o["Key"].endswith(".safetensors") for o in listed.get("Contents", []))
    finally:
        server.stop()
