"""Contract: fal's official Python client (`fal-client`) drives the fal emulator: its CDN uploads (one shot
and multipart), the queue (submit, status with and without logs, result, cancel). Where fal-client and the
emulator disagree the emulator is wrong; loraflow's own client is then checked against the same answers.

fal-client builds `https://` URLs from FAL_RUN_HOST / FAL_QUEUE_RUN_HOST (read at import) and fixed
https constants for storage (REST_URL, CDN_URL); the emulator speaks plain HTTP on loopback, so the test
points those module constants at it."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator

import httpx
import pytest

from loraflow.testing.fal_emulator import FalEmulator

fal_client = pytest.importorskip("fal_client", reason="fal's official client (the dev extra) is the judge here")
KEY = "emu-key-id:emu-secret"
APP = "fal-ai/flux-lora-fast-training"


@pytest.fixture
def official(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FalEmulator, object]]:
    from fal_client import client as module

    emulator = FalEmulator(KEY, queue=(1, 0), progress_polls=2)
    base = emulator.start()
    for name, value in (("QUEUE_URL_FORMAT", base + "/"), ("RUN_URL_FORMAT", base + "/"), ("REST_URL", base),
                        ("CDN_URL", base)):  # fmt: skip
        monkeypatch.setattr(module, name, value)
    monkeypatch.setattr("fal_client.client.CDNTokenManager.__init__", _token_manager_init(base))
    yield emulator, fal_client.SyncClient(key=KEY)
    emulator.close()


def _token_manager_init(base: str):
    """CDNTokenManager reads REST_URL when the class is built, not when called: give it the emulator's."""
    from fal_client.client import CDNTokenManager

    original = CDNTokenManager.__init__

    def init(self, auth) -> None:
        original(self, auth)
        self._url = f"{base}/storage/auth/token?storage_type=fal-cdn-v3"

    return init


def dataset_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
        zf.writestr("a.txt", "lfx, a photo")
    return buf.getvalue()


def test_fal_client_uploads_one_shot_and_in_parts(official, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator, client = official
    small = dataset_zip()
    url = client.upload(small, "application/zip", "d.zip")
    assert httpx.get(url).content == small
    from fal_client import client as module

    monkeypatch.setattr(module, "MULTIPART_THRESHOLD", 256 * 1024)  # fal-client's is 100 MiB
    monkeypatch.setattr(module, "MULTIPART_CHUNK_SIZE", 100 * 1024)
    big = bytes(range(256)) * 2000  # 512 kB: six parts
    url = client.upload(big, "application/zip", "big.zip")
    assert hashlib.sha256(httpx.get(url).content).digest() == hashlib.sha256(big).digest()
    assert not emulator.multipart  # completed


def test_fal_client_follows_a_request_with_and_without_logs(official) -> None:
    emulator, client = official
    url = client.upload(dataset_zip(), "application/zip", "d.zip")
    handle = client.submit(APP, arguments={"images_data_url": url, "steps": 10, "create_masks": False})
    statuses = []
    while not isinstance(status := handle.status(with_logs=False), fal_client.Completed):
        statuses.append(status)
        assert getattr(status, "logs", None) is None  # logs=false: none sent
    assert isinstance(statuses[0], fal_client.Queued) and any(isinstance(s, fal_client.InProgress) for s in statuses)
    with_logs = handle.status(with_logs=True)
    assert any("10/10" in entry["message"] for entry in with_logs.logs)
    result = handle.get()
    assert result["diffusers_lora_file"]["url"].startswith(emulator.base)
    (request,) = emulator.state()["requests"].values()
    assert request["input"]["create_masks"] is False


def test_fal_client_cancels_a_queued_request(official) -> None:
    emulator, client = official
    url = client.upload(dataset_zip(), "application/zip", "d.zip")
    handle = client.submit(APP, arguments={"images_data_url": url, "steps": 10})
    handle.cancel()
    assert next(iter(emulator.state()["requests"].values()))["cancelled"] is True


def test_loraflows_multipart_upload_is_the_one_fal_client_makes(official) -> None:
    """loraflow's client above the threshold: the same token, parts, ETags and completion fal-client uses."""
    from loraflow.engines.fal_client import upload

    emulator, _ = official
    big, data = bytes(range(256)) * 2000, dataset_zip()
    with httpx.Client(headers={"Authorization": f"Key {KEY}"}) as http:
        url = upload(http, emulator.base, "big.zip", big, threshold=256 * 1024, chunk=100 * 1024)
        small = upload(http, emulator.base, "small.zip", data)
    assert hashlib.sha256(httpx.get(url).content).digest() == hashlib.sha256(big).digest()
    assert httpx.get(small).content == data and not emulator.multipart
