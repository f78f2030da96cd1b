"""S3-compatible storage (AWS S3, Cloudflare R2, MinIO, moto): multipart uploads with checksums, and
presigned PUT URLs so a rented GPU host can upload directly with curl and no credentials.

Credentials come only from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, boto3's usual
chain); the endpoint from the target's endpoint_url or LORAFLOW_S3_ENDPOINT_URL, else boto3's own
(AWS_ENDPOINT_URL_S3, ~/.aws/config, or AWS itself). The region is boto3's to resolve (AWS_DEFAULT_REGION,
AWS_REGION, ~/.aws/config): only an R2 endpoint is given `auto`, the region R2 signs for.

`public: true` sends no ACL: AWS buckets created since April 2023 refuse ACLs (AccessControlListNotSupported)
and R2 ignores them. A bucket is made public by its own policy or, on R2, by a public domain (r2.dev or a
custom one). The URL recorded for a public object is the operator's LORAFLOW_S3_PUBLIC_BASE_URL with the
key, or the endpoint's path-style URL; consumers that must fetch it (ComfyUI Deploy) get a presigned link
instead unless that base URL is configured.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from loraflow.errors import UserInputError

PART_SIZE = 8 * 1024 * 1024
PUBLIC_BASE_ENV = "LORAFLOW_S3_PUBLIC_BASE_URL"  # e.g. https://pub-<hash>.r2.dev or https://cdn.example.com
R2_HOST_SUFFIX = ".r2.cloudflarestorage.com"


@dataclass(frozen=True)
class Uploaded:
    key: str
    url: str
    size: int
    sha256: str


def client(endpoint_url: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("LORAFLOW_S3_ENDPOINT_URL") or None
    # A new session each time: boto3's default session reads the environment and ~/.aws/config once per
    # process, so a long-lived server (or a test run) would keep the first region it saw.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="auto" if is_r2(endpoint) else None,  # None: boto3 resolves it (env, ~/.aws/config)
        config=Config(
            signature_version="s3v4",
            retries={"max_attempts": 5, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def is_r2(endpoint: str | None) -> bool:
    """Cloudflare R2's S3 endpoint (https://<account>.r2.cloudflarestorage.com): it signs for region `auto`."""
    host = (urlparse(endpoint).hostname or "") if endpoint else ""
    return host.endswith(R2_HOST_SUFFIX)


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def public_base_url() -> str | None:
    """The operator's public address for the bucket's objects (LORAFLOW_S3_PUBLIC_BASE_URL), if any."""
    return (os.environ.get(PUBLIC_BASE_ENV) or "").strip().rstrip("/") or None


def object_url(s3: Any, bucket: str, key: str, public: bool) -> str:
    """The public URL, or `s3://bucket/key` for a private object: a presigned URL carries the access key id,
    so it is made on demand (`presigned_get`) and never stored on the job. A public object's URL is the
    operator's public base URL with the key when one is configured; else the endpoint's path-style URL, which
    serves it where the bucket's policy allows public reads (R2's S3 endpoint never does: it needs a public
    domain)."""
    if public:
        base = public_base_url()
        if base:
            return f"{base}/{key}"
        if not is_r2(s3.meta.endpoint_url):
            return f"{s3.meta.endpoint_url.rstrip('/')}/{bucket}/{key}"
    return f"s3://{bucket}/{key}"


def presigned_get(s3: Any, bucket: str, key: str, expires: int = 3600) -> str:
    return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)


def file_sha256(path: Path) -> str:
    from loraflow.files import file_meta

    return file_meta(path)["sha256"]


def upload_file(
    s3: Any, path: Path, bucket: str, key: str, public: bool = False, part_size: int = PART_SIZE
) -> Uploaded:
    """Upload (in parts when large), each part with a SHA-256 the server checks, the whole file's SHA-256
    stored as object metadata, and compare size and hash once it is there."""
    size, digest = path.stat().st_size, file_sha256(path)
    extra: dict[str, Any] = {"Metadata": {"sha256": digest}}  # no ACL, public or not (see the module's doc)
    if size <= part_size:
        data = path.read_bytes()
        s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumSHA256=_sha256_b64(data), **extra)
    else:
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", **extra)
        parts = []
        try:
            with path.open("rb") as f:
                number = 1
                while chunk := f.read(part_size):
                    resp = s3.upload_part(
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload["UploadId"],
                        PartNumber=number,
                        Body=chunk,
                        ChecksumSHA256=_sha256_b64(chunk),
                    )
                    parts.append(
                        {
                            "ETag": resp["ETag"],
                            "PartNumber": number,
                            "ChecksumSHA256": resp.get("ChecksumSHA256", _sha256_b64(chunk)),
                        }
                    )
                    number += 1
            s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
            )
        except Exception:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            raise
    head = s3.head_object(Bucket=bucket, Key=key)
    if head["ContentLength"] != size or head.get("Metadata", {}).get("sha256") != digest:
        raise UserInputError(
            f"s3://{bucket}/{key} does not match the local file after upload", fix="upload again; check the endpoint"
        )
    return Uploaded(key, object_url(s3, bucket, key, public), size, digest)


def presigned_put(s3: Any, bucket: str, key: str, expires: int = 3600) -> str:
    """A URL a host without credentials can PUT the file to (curl -T file URL)."""
    return s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)


def publish(
    bundle: Path, lora: Path, bucket: str, prefix: str, endpoint_url: str | None, public: bool,
    more: Sequence[Path] = (),
) -> dict[str, Any]:
    """The bundle and the LoRA file (`more`: the other files of a pair, Wan 2.2's high-noise expert)."""
    s3 = client(endpoint_url)
    base = prefix.strip("/")
    results = {}
    for path in (bundle, lora, *more):
        key = f"{base}/{path.name}" if base else path.name
        up = upload_file(s3, path, bucket, key, public)
        results[path.name] = {"key": up.key, "url": up.url, "size": up.size, "sha256": up.sha256}
    # Whether the recorded URLs are the operator's public ones (served as they are) or need signing to fetch.
    served = bool(public and public_base_url())
    return {"type": "s3", "bucket": bucket, "files": results, "public_url_served": served}
