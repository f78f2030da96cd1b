"""The process the `fal` engine runs: one fal.ai training request, followed to its LoRA.

    python -m loraflow.engines.fal_client ENGINE/fal.json

It speaks fal's queue protocol (POST queue.fal.run/<app> -> request_id, status_url, response_url;
GET status?logs=1 -> IN_QUEUE with queue_position, IN_PROGRESS with logs, COMPLETED; GET response ->
the result with diffusers_lora_file.url) and its storage upload (POST rest.fal.ai/storage/upload/initiate
-> upload_url, file_url; PUT the bytes; above 100 MiB fal-client's multipart CDN upload).
It prints `LORAFLOW {json}` lines, as the builtin trainer does,
so the runner reads it with the same parser. The request id is written before anything else happens:
a client started again (restart, resume, a new runner) follows that request and never pays twice.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from loraflow.trainer.events import STOPPED_EXIT, emit

QUEUE_URL = "https://queue.fal.run"
STORAGE_URL = "https://rest.fal.ai"
FAILED_EXIT = 1
# fal-client's (1.0.3, client.py): data above 100 MiB goes up in 10 MiB parts.
MULTIPART_THRESHOLD = 100 * 1024 * 1024
MULTIPART_CHUNK = 10 * 1024 * 1024
COUNTER = re.compile(r"(\d+)\s*/\s*(\d+)")
STOP = threading.Event()


class FalError(Exception):
    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else json.dumps(detail)[:500]


def _check(response: httpx.Response, what: str) -> httpx.Response:
    """Turn fal's error answers into errors a user can act on."""
    if response.status_code in (401, 403):
        raise FalError(
            "fal_auth",
            f"fal refused the key while {what} (HTTP {response.status_code}: {_detail(response)})",
            "check FAL_KEY (https://fal.ai/dashboard/keys): it is '<key id>:<secret>' and has not been revoked",
        )
    if response.status_code == 422:
        raise FalError("bad_input", f"fal rejected the request while {what}: {_detail(response)}", "fix the spec")
    if response.status_code >= 400:
        raise httpx.HTTPStatusError(f"HTTP {response.status_code} while {what}", request=response.request,
                                    response=response)
    return response


def _retrying(call: Any, what: str, tries: int = 6) -> httpx.Response:
    """429, 5xx and dropped connections are fal's to recover from: back off and ask again."""
    delay = 1.0
    for attempt in range(tries):
        try:
            return _check(call(), what)
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            if attempt == tries - 1 or STOP.is_set():
                raise FalError("fal_unreachable", f"fal did not answer while {what}: {exc}",
                               "try again later (`loraflow jobs resume`); the request id is kept") from exc
            emit("warning", message=f"fal: {exc}; trying again in {delay:.0f} s")
            STOP.wait(delay)
            delay = min(delay * 2, 30)
    raise AssertionError("unreachable")


def pack(dataset_dir: Path, caption_extension: str = "txt") -> bytes:
    """The prepared dataset as fal reads it: images with same-named .txt captions, in one zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(dataset_dir.rglob("*")):
            if path.is_file() and path.name != "manifest.json":
                name = path.relative_to(dataset_dir).as_posix()
                if path.suffix == f".{caption_extension}":
                    name = name[: -len(path.suffix)] + ".txt"  # fal pairs photo.jpg with photo.txt only
                zf.write(path, name)
    return buf.getvalue()


def upload(http: httpx.Client, storage: str, name: str, data: bytes, threshold: int = MULTIPART_THRESHOLD,
           chunk: int = MULTIPART_CHUNK) -> str:  # fmt: skip
    """fal storage: initiate (get a signed upload URL and the file's URL), then PUT the bytes; above fal-client's
    multipart threshold, in parts through fal's CDN as fal-client does (one PUT of a big zip is one failure
    away from starting over)."""
    if len(data) > threshold:
        return upload_multipart(http, storage, name, data, chunk)
    initiated = _retrying(
        lambda: http.post(
            f"{storage}/storage/upload/initiate",
            params={"storage_type": "fal-cdn-v3"},
            json={"file_name": name, "content_type": "application/zip"},
        ),
        "starting the dataset upload",
    ).json()
    _retrying(
        lambda: httpx.put(initiated["upload_url"], content=data, headers={"Content-Type": "application/zip"},
                          timeout=600),
        "uploading the dataset",
    )
    return str(initiated["file_url"])


def upload_multipart(http: httpx.Client, storage: str, name: str, data: bytes, chunk: int) -> str:
    """fal-client's multipart upload: a CDN token (POST storage/auth/token), then POST <base_url>/files/upload/
    multipart -> {access_url, uploadId}, PUT each part to <access_url>/multipart/<uploadId>/<n> (keeping its
    ETag) and POST .../complete with the parts. Each part is retried on its own."""
    token = _retrying(lambda: http.post(f"{storage}/storage/auth/token", params={"storage_type": "fal-cdn-v3"},
                                        json={}), "getting an upload token").json()  # fmt: skip
    auth = {"Authorization": f"{token['token_type']} {token['token']}"}
    with httpx.Client(headers=auth, timeout=600) as cdn:
        started = _retrying(lambda: cdn.post(f"{token['base_url']}/files/upload/multipart", headers={
            "Content-Type": "application/zip", "X-Fal-File-Name": name}), "starting the dataset upload").json()
        access, upload_id = str(started["access_url"]), str(started["uploadId"])
        parts = []
        for number, start in enumerate(range(0, len(data), chunk), start=1):
            piece = data[start : start + chunk]
            put = _retrying(lambda n=number, b=piece: cdn.put(f"{access}/multipart/{upload_id}/{n}", content=b,
                                                              headers={"Content-Type": "application/zip"}),
                            f"uploading part {number} of the dataset")  # fmt: skip
            parts.append({"partNumber": number, "etag": put.headers["etag"]})
        _retrying(lambda: cdn.post(f"{access}/multipart/{upload_id}/complete", json={"parts": parts}),
                  "finishing the dataset upload")  # fmt: skip
    return access


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _download(url: str, dest: Path) -> None:
    """fal's result files are public CDN URLs: fetched without the key, which stays with fal's API."""
    tmp = dest.with_name(dest.name + ".partial")
    with httpx.stream("GET", url, timeout=600, follow_redirects=True) as response:
        _check(response, f"downloading {dest.name}")
        with tmp.open("wb") as f:
            for chunk in response.iter_bytes(1 << 20):
                f.write(chunk)
    tmp.replace(dest)


class Follower:
    """Turns successive status answers into events: queue position, new log lines, step counters."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.logs_seen = 0
        self.position: int | None = None
        self.phase = ""
        self.step = 0

    def _phase(self, phase: str, **data: Any) -> None:
        if phase != self.phase:
            self.phase = phase
            emit("phase", phase=phase, **data)

    def feed(self, status: dict[str, Any]) -> bool:
        """True once fal reports COMPLETED."""
        kind = status.get("status")
        if kind == "IN_QUEUE":
            position = status.get("queue_position")
            if position != self.position:
                self.position = position
                self.phase = "queued"
                emit("phase", phase="queued", queue_position=position)
            return False
        logs = status.get("logs") or []
        for entry in logs[self.logs_seen :]:
            message = str(entry.get("message", "")).strip()
            if not message:
                continue
            emit("log", message=f"fal: {message}")
            counter = next((m for m in COUNTER.finditer(message) if int(m.group(2)) == self.total), None)
            if counter is not None:
                self._phase("training")  # from here the stall detector judges progress
                self.step = min(int(counter.group(1)), self.total)
                emit("progress", step=self.step, total=self.total)
        self.logs_seen = max(self.logs_seen, len(logs))
        if kind == "IN_PROGRESS":
            self._phase("hosted", message="fal is training")
        return kind == "COMPLETED"


def run(config: dict[str, Any]) -> int:
    key = os.environ.get("FAL_KEY")
    if not key:
        emit("error", code="fal_auth", message="FAL_KEY is not set", hint="export FAL_KEY=<key id>:<secret>")
        return FAILED_EXIT
    queue = os.environ.get("FAL_QUEUE_URL", QUEUE_URL).rstrip("/")
    storage = os.environ.get("FAL_STORAGE_URL", STORAGE_URL).rstrip("/")
    poll_s = float(os.environ.get("LORAFLOW_FAL_POLL_S", "5"))
    state_path = Path(config["state_path"])
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    total = int(config["input"]["steps"])
    with httpx.Client(headers={"Authorization": f"Key {key}"}, timeout=60) as http:
        if state is None:
            emit("phase", phase="uploading")
            data = pack(Path(config["dataset_dir"]), config.get("caption_extension", "txt"))
            file_url = upload(http, storage, f"{config.get('job_id', 'dataset')}.zip", data)
            fal_input = {"images_data_url": file_url, **config["input"]}
            submitted = _retrying(lambda: http.post(f"{queue}/{config['app']}", json=fal_input), "submitting").json()
            state = {k: submitted[k] for k in ("request_id", "status_url", "response_url", "cancel_url")
                     if k in submitted}
            state["submitted_at"] = time.time()
            _write_state(state_path, state)
            emit("log", message=f"submitted to fal {config['app']}: request {state['request_id']}")
        else:
            emit("log", message=f"following fal request {state['request_id']}")
        follower = Follower(total)
        while True:
            if STOP.is_set():
                return _stop(http, state, state_path, follower)
            status = _retrying(lambda: http.get(state["status_url"], params={"logs": 1}), "reading the status")
            if follower.feed(status.json()):
                break
            STOP.wait(poll_s)
        answer = _result(http, state["response_url"])
        if answer.status_code >= 400 and answer.status_code not in (401, 403):
            state_path.unlink(missing_ok=True)  # a failed run is not billed; resuming submits it again
            raise FalError("fal_failed", f"fal's training request failed: {_detail(answer)}",
                           "read the message; `loraflow jobs resume` submits the run again")
        result = _check(answer, "reading the result").json()
        lora = result.get("diffusers_lora_file") or {}
        if not lora.get("url"):
            raise FalError("fal_failed", "fal's result has no diffusers_lora_file", "report it to fal")
        _download(lora["url"], Path(config["lora_path"]))
        if (result.get("config_file") or {}).get("url"):
            _download(result["config_file"]["url"], Path(config["config_path"]))
    emit("progress", step=total, total=total)
    emit("cost", usd=round(float(config["usd_per_step"]) * total, 4))
    emit("done", step=total, lora=config["lora_path"])
    return 0


def _result(http: httpx.Client, url: str, tries: int = 6) -> httpx.Response:
    """The finished request's answer. A gateway's 429/502/503/504 or a dropped connection is asked again;
    any other error status is the run's own failure, which fal reports there."""
    delay = 1.0
    for attempt in range(tries):
        try:
            answer = http.get(url)
            if answer.status_code not in (429, 502, 503, 504) or attempt == tries - 1:
                return answer
            emit("warning", message=f"fal: HTTP {answer.status_code} reading the result; trying again")
        except httpx.TransportError as exc:
            if attempt == tries - 1:
                raise FalError("fal_unreachable", f"fal did not answer while reading the result: {exc}",
                               "try again later (`loraflow jobs resume`); the request id is kept") from exc
        STOP.wait(delay)
        delay = min(delay * 2, 30)
    raise AssertionError("unreachable")


def _stop(http: httpx.Client, state: dict[str, Any], state_path: Path, follower: Follower) -> int:
    """Stopping: a request still queued is cancelled (nothing spent); one fal already trains cannot be,
    so its id is kept and resuming follows it to its LoRA."""
    if follower.phase in ("queued", "uploading", "") and state.get("cancel_url"):
        answer = http.put(state["cancel_url"])
        if answer.status_code < 400:
            state_path.unlink(missing_ok=True)
            emit("stopped", step=follower.step, message="the queued fal request was cancelled")
            return STOPPED_EXIT
    emit("stopped", step=follower.step, message="fal keeps training this request; resume to collect its LoRA")
    return STOPPED_EXIT


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loraflow.engines.fal_client ENGINE/fal.json", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    config = json.loads(Path(args[0]).read_text())
    try:
        return run(config)
    except FalError as exc:
        emit("error", code=exc.code, message=exc.message, hint=exc.hint)
        return FAILED_EXIT


if __name__ == "__main__":
    sys.exit(main())
