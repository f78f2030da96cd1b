"""S3/R2 publishing against moto's S3 server: a real HTTP endpoint on loopback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraflow.errors import UserInputError


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from loraflow.publish.s3 import client

    c = client(s3_endpoint)
    c.create_bucket(Bucket="loras")
    return c


def test_multipart_upload_with_checksums(s3, tmp_path: Path) -> None:
    from loraflow.publish.s3 import upload_file

    data = os.urandom(11 * 1024 * 1024 + 123)
    path = tmp_path / "big.safetensors"
    path.write_bytes(data)
    up = upload_file(s3, path, "loras", "users/a/big.safetensors", part_size=5 * 1024 * 1024)
    assert up.size == len(data) and up.sha256 == hashlib.sha256(data).hexdigest()
    got = s3.get_object(Bucket="loras", Key="users/a/big.safetensors")["Body"].read()
    assert got == data
    head = s3.head_object(Bucket="loras", Key="users/a/big.safetensors")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert head["Metadata"]["sha256"] == up.sha256
    assert up.url == "s3://loras/users/a/big.safetensors"  # private: no presigned URL (it names the key id) stored
    from loraflow.publish.s3 import presigned_get

    assert "X-Amz-Signature" in presigned_get(s3, "loras", up.key)


def test_presigned_put_from_a_process_without_credentials(s3, tmp_path: Path) -> None:
    from loraflow.publish.s3 import presigned_put

    url = presigned_put(s3, "loras", "from-gpu-host/lora.safetensors")
    payload = tmp_path / "lora.safetensors"
    payload.write_bytes(b"weights" * 1000)
    script = (
        "import sys, urllib.request\n"
        "req = urllib.request.Request(sys.argv[1], data=open(sys.argv[2], 'rb').read(), method='PUT',\n"
        "                             headers={'Content-Type': 'application/octet-stream'})\n"
        "print(urllib.request.urlopen(req).status)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the host has no credentials
    out = subprocess.run(
        [sys.executable, "-c", script, url, str(payload)], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "200"
    assert s3.get_object(Bucket="loras", Key="from-gpu-host/lora.safetensors")["Body"].read() == payload.read_bytes()


def test_publish_bundle_and_lora_records_urls(s3, s3_endpoint: str, tmp_path: Path) -> None:
    from loraflow.publish.s3 import publish

    bundle, lora = tmp_path / "loraflow-x-1.zip", tmp_path / "x.safetensors"
    bundle.write_bytes(b"zip" * 100)
    lora.write_bytes(b"lora" * 100)
    result = publish(bundle, lora, "loras", "jobs/1", s3_endpoint, public=True)
    assert result["files"]["x.safetensors"]["url"] == f"{s3_endpoint}/loras/jobs/1/x.safetensors"
    assert result["files"]["loraflow-x-1.zip"]["sha256"] == hashlib.sha256(b"zip" * 100).hexdigest()


def test_checksum_mismatch_is_detected(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loraflow.publish import s3 as s3mod

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    real_head = s3.head_object

    def lying_head(**kw):
        out = real_head(**kw)
        out["Metadata"] = {"sha256": "0" * 64}
        return out

    monkeypatch.setattr(s3, "head_object", lying_head)
    with pytest.raises(UserInputError, match="does not match"):
        s3mod.upload_file(s3, path, "loras", "f.bin")
