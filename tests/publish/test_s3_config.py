"""boto3 as the judge of how loraflow addresses S3: an AWS-style configuration (no endpoint, the region from
~/.aws/config) and an R2-style one (an r2.cloudflarestorage.com endpoint, region `auto`); and `public: true`
without the ACL that buckets made since 2023 refuse, recording a URL a consumer can fetch."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.publish.test_s3 import s3, s3_endpoint  # noqa: F401 - fixtures


@pytest.fixture
def aws_style(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials in the environment, the region only in ~/.aws/config, no endpoint anywhere."""
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "LORAFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "LORAFLOW_S3_PUBLIC_BASE_URL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = eu-west-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return config


def scope(url: str) -> str:
    """The region a presigned URL was signed for (its credential scope: key/date/REGION/s3/aws4_request)."""
    return parse_qs(urlparse(url).query)["X-Amz-Credential"][0].split("/")[2]


def test_aws_style_config_keeps_its_region(aws_style: Path) -> None:
    from loraflow.publish.s3 import client, presigned_get

    s3c = client(None)
    assert s3c.meta.region_name == "eu-west-2"  # not "auto": ~/.aws/config's region stands
    url = presigned_get(s3c, "loras", "jobs/1/x.safetensors")
    assert scope(url) == "eu-west-2" and ".auto." not in urlparse(url).hostname
    assert urlparse(url).hostname.endswith("amazonaws.com")


def test_aws_style_config_uploads_and_signs_through_boto3s_own_endpoint_setting(
    aws_style: Path, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """AWS_ENDPOINT_URL_S3 is boto3's own endpoint setting (here moto on loopback): loraflow leaves it, and
    the region, to boto3; what it uploads can be fetched through the link it signs."""
    from loraflow.publish.s3 import client, presigned_get, upload_file

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    s3c = client(None)
    assert s3c.meta.endpoint_url == s3_endpoint and s3c.meta.region_name == "eu-west-2"
    s3c.create_bucket(Bucket="loras-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"lora" * 500)
    upload_file(s3c, path, "loras-eu", "jobs/1/x.safetensors")
    url = presigned_get(s3c, "loras-eu", "jobs/1/x.safetensors")
    assert scope(url) == "eu-west-2"
    got = httpx.get(url)
    assert got.status_code == 200 and hashlib.sha256(got.content).digest() == hashlib.sha256(b"lora" * 500).digest()


def test_r2_style_endpoint_signs_for_auto(aws_style: Path) -> None:
    from loraflow.publish.s3 import client, object_url, presigned_put

    s3c = client("https://0123abcd.r2.cloudflarestorage.com")
    assert s3c.meta.region_name == "auto"
    assert scope(presigned_put(s3c, "loras", "k")) == "auto"
    # R2's S3 endpoint never serves an object publicly: without a public domain a public object is recorded
    # by its s3:// name (consumers get a signed link), never an endpoint URL that answers 400.
    assert object_url(s3c, "loras", "k", public=True) == "s3://loras/k"


def test_public_sends_no_acl_and_records_the_operators_public_url(
    s3, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """Buckets created since April 2023 refuse any ACL (AccessControlListNotSupported): the request must
    not carry one. The recorded URL is the operator's public base URL (an R2 public domain, a CDN)."""
    from loraflow.publish.s3 import publish

    sent: list[dict[str, str]] = []
    s3.meta.events.register("before-send.s3", lambda request, **_: sent.append(dict(request.headers)))
    monkeypatch.setattr("loraflow.publish.s3.client", lambda endpoint=None: s3)
    bundle, lora = tmp_path / "loraflow-x-1.zip", tmp_path / "x.safetensors"
    bundle.write_bytes(b"zip" * 100)
    lora.write_bytes(b"lora" * 100)
    plain = publish(bundle, lora, "loras", "jobs/1", s3_endpoint, public=True)
    assert sent and not [h for h in sent if any(k.lower() == "x-amz-acl" for k in h)]
    assert plain["files"]["x.safetensors"]["url"] == f"{s3_endpoint}/loras/jobs/1/x.safetensors"
    assert plain["public_url_served"] is False  # a bucket's policy decides: consumers get a signed link
    monkeypatch.setenv("LORAFLOW_S3_PUBLIC_BASE_URL", "https://pub-0123.r2.dev/")
    served = publish(bundle, lora, "loras", "jobs/2", s3_endpoint, public=True)
    assert served["files"]["x.safetensors"]["url"] == "https://pub-0123.r2.dev/jobs/2/x.safetensors"
    assert served["public_url_served"] is True
