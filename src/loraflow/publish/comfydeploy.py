"""Register a published LoRA with a ComfyUI Deploy workspace, through its volume/model API.

ComfyDeploy downloads model files into the workspace's model volume itself: `POST /api/file
{url, filename, folder_path}` starts the download, from a Hugging Face URL (with the workspace's own
HF token for a private repo) or from any other link, such as a signed S3 URL. The download then shows in
`GET /api/volume/downloading-models` as status `started`, with `download_progress` rising, until it
fails (`failed`, with an `error_log`) or leaves the list once done. The file is then listed by
`GET /api/volume/private-models`. The workspace is the one COMFY_DEPLOY_API_KEY belongs to; the key
comes from the environment only. COMFY_DEPLOY_API_URL points at another server (the tests' emulator).
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from loraflow.errors import UserInputError

API_URL = "https://api.comfydeploy.com/api"
KEY_ENV = "COMFY_DEPLOY_API_KEY"
URL_ENV = "COMFY_DEPLOY_API_URL"


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


def source_url(results: list[dict[str, Any]], lora_name: str) -> tuple[str, str]:
    """(URL ComfyDeploy downloads from, what to record) from the targets published before this one.

    A Hugging Face result gives the file at its commit; an S3 result gives the operator's public URL when
    one is configured, else a signed link valid for an hour (a bucket is public by its policy, not by an
    ACL, so the plain URL may not serve; recorded as its URL or s3://bucket/key, never the signed URL: it
    carries the access key id)."""
    for result in reversed(results):
        if result.get("type") == "huggingface":
            endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
            url = f"{endpoint}/{result['repo_id']}/resolve/{result.get('commit') or 'main'}/{lora_name}"
            return url, url
        if result.get("type") == "s3":
            from loraflow.publish.s3 import client, presigned_get

            entry = (result.get("files") or {}).get(lora_name)
            if not entry:
                continue
            if result.get("public_url_served"):  # the operator's public domain (LORAFLOW_S3_PUBLIC_BASE_URL)
                return entry["url"], entry["url"]
            s3 = client(result.get("endpoint_url") or os.environ.get("LORAFLOW_S3_ENDPOINT_URL"))
            return presigned_get(s3, result["bucket"], entry["key"]), entry["url"]
    raise UserInputError(
        "ComfyDeploy downloads the LoRA from a URL, and none was published",
        where="publish.targets",
        fix="publish to a huggingface or s3 target first (put it before the comfydeploy target)",
    )


def register(
    url: str, filename: str, folder_path: str, wait_s: float = 300, poll_s: float = 2.0
) -> dict[str, Any]:
    """Ask the workspace to download `url` into `folder_path/filename`, and wait (up to wait_s) until it
    has. Returns what to record: where it went and whether the download finished."""
    key = os.environ.get(KEY_ENV)
    if not key:
        raise UserInputError(
            "publishing to ComfyDeploy needs an API key",
            where="publish.targets",
            fix=f"create one in the ComfyDeploy dashboard (Settings > API Keys) and set {KEY_ENV}",
        )
    base = (os.environ.get(URL_ENV) or API_URL).rstrip("/")
    path = f"{folder_path}/{filename}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        answer = http.post("/file", json={"url": url, "filename": filename, "folder_path": folder_path})
        if answer.status_code in (401, 403):
            raise UserInputError(
                f"ComfyDeploy refused the key ({answer.status_code}: {_detail(answer)})",
                fix=f"check {KEY_ENV}: a key of the workspace the LoRA should go to",
            )
        # 409 "File <path> already exists" (its existence check); 400 "File already exists." (a race past it).
        if answer.status_code == 409 or (answer.status_code == 400 and "exists" in _detail(answer)):
            raise UserInputError(
                f"ComfyDeploy already has {path} in its volume",
                where="publish.targets.filename",
                fix="give the comfydeploy target another filename, or delete the file in the workspace",
            )
        if answer.status_code >= 400:
            raise UserInputError(
                f"ComfyDeploy refused to add {path} ({answer.status_code}: {_detail(answer)})",
                where="publish.targets",
                fix="check the comfydeploy target's folder_path and filename, then `loraflow publish JOB --to "
                "comfydeploy`",
            )
        record = {"type": "comfydeploy", "api": base, "path": path, "folder_path": folder_path,
                  "filename": filename, "status": "started"}
        deadline = time.monotonic() + wait_s
        while True:
            status = _download_status(http, filename, folder_path)
            if status is not None and status.get("status") == "failed":
                raise UserInputError(
                    f"ComfyDeploy could not download the LoRA into {path}: {status.get('error_log') or 'failed'}",
                    fix="check that the source is reachable from ComfyDeploy (a private Hugging Face repo "
                    "needs the workspace's own HF token in its settings), then `loraflow publish JOB --to "
                    "comfydeploy`",
                )
            if status is None and _in_volume(http, path):
                return {**record, "status": "success"}
            if time.monotonic() >= deadline:
                progress = (status or {}).get("download_progress")
                return {**record, "status": "downloading", "download_progress": progress}
            time.sleep(poll_s)


def _download_status(http: httpx.Client, filename: str, folder_path: str) -> dict[str, Any] | None:
    answer = http.get("/volume/downloading-models")
    answer.raise_for_status()
    mine = [m for m in answer.json()
            if m.get("model_name") == filename and str(m.get("folder_path", "")).strip("/") == folder_path]
    return max(mine, key=lambda m: str(m.get("created_at") or ""), default=None)  # (a failed try stays listed)


def _in_volume(http: httpx.Client, path: str) -> bool:
    answer = http.get("/volume/private-models")
    answer.raise_for_status()
    return any(str(f.get("path", "")).strip("/") == path for f in answer.json())
