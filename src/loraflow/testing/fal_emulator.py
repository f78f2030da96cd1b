"""A fal.ai emulator on 127.0.0.1: the queue API and the storage upload, answering as the real service.

What it answers (shapes from fal's queue and storage documentation; see docs/engines.md):
    POST /storage/upload/initiate?storage_type=...  {file_name, content_type} -> {upload_url, file_url}
    PUT  <upload_url>                                the bytes (a signed URL: no Authorization)
    GET  <file_url>                                  the bytes back (a public CDN URL)
    POST /<app>                                      input -> {request_id, status_url, response_url, cancel_url, ...}
    GET  /<app>/requests/<id>/status?logs=1          IN_QUEUE {queue_position} / IN_PROGRESS {logs} / COMPLETED
    GET  /<app>/requests/<id>                        the result {diffusers_lora_file, config_file}
    PUT  /<app>/requests/<id>/cancel                 202 CANCELLATION_REQUESTED while queued, else 400
    POST /storage/auth/token?storage_type=fal-cdn-v3 -> {token, token_type, base_url, expires_at} (the CDN token)
    POST <base_url>/files/upload                     the bytes, X-Fal-File-Name -> {access_url} (fal-client's way)
    POST <base_url>/files/upload/multipart           -> {access_url, uploadId}; then PUT <access_url>/multipart/
                                                     <uploadId>/<n> (answers an ETag) and POST .../complete
                                                     {parts: [{partNumber, etag}]}: what fal-client does above
                                                     its MULTIPART_THRESHOLD
The status answer carries `logs` only when asked (`logs=1` or `logs=true`; `logs=false` gives null).
Every queue and storage-initiate call needs `Authorization: Key <FAL_KEY>` (401 otherwise). A request
moves one state per status poll: through `queue` positions, then `progress_polls` rounds of logs with
step counters, then COMPLETED. `fail="result"` makes the finished request answer 500, as a failed run does;
`result_503s = N` makes the next N reads of a result answer 503, as a busy gateway does; `inert = True`
(`--inert`) returns a LoRA whose B matrices are all zero, as a run that trained nothing would.

Inspection (not fal's API): GET /_emu/state.

    python -m loraflow.testing.fal_emulator --port 8766 --key KEY
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def lora_bytes(rank: int = 16, seed: int = 7, inert: bool = False) -> bytes:
    """A small diffusers-layout Flux LoRA, as fal's trainers write (transformer.*.lora_A/B)."""
    from safetensors.torch import save

    from loraflow.testing.fake_lora import diffusers_lora

    return save(diffusers_lora(rank, seed, inert=inert), metadata={"format": "pt"})


@dataclass
class Request:
    id: str
    app: str
    input: dict[str, Any]
    queue: list[int]
    polls: int = 0
    cancelled: bool = False
    logs: list[dict[str, Any]] = field(default_factory=list)


class FalEmulator:
    def __init__(self, key: str, queue: tuple[int, ...] = (2, 1, 0), progress_polls: int = 3, fail: str = "") -> None:
        self.key = key
        self.queue = list(queue)
        self.progress_polls = progress_polls
        self.fail = fail
        self.result_503s = 0  # the next result reads answered 503 by the gateway (a transient failure)
        self.inert = False  # return an all-zero LoRA (a run that trained nothing)
        self.files: dict[str, tuple[str, bytes]] = {}  # token -> (name, bytes)
        self.pending_uploads: dict[str, str] = {}  # token -> file name
        self.cdn_token = uuid.uuid4().hex  # what POST /storage/auth/token hands out for the CDN calls
        self.multipart: dict[str, dict[str, Any]] = {}  # uploadId -> {token, name, parts: {n: bytes}}
        self.requests: dict[str, Request] = {}
        self.status_polls = 0
        self.lock = threading.Lock()
        self.base = ""
        self._server: ThreadingHTTPServer | None = None

    # --- life -----------------------------------------------------------------------------------

    def start(self, port: int = 0) -> str:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: Any, raw: bytes | None = None, kind: str = "application/json") -> None:
                data = raw if raw is not None else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                emulator.handle(self, "GET")

            def do_POST(self) -> None:
                emulator.handle(self, "POST")

            def do_PUT(self) -> None:
                emulator.handle(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.base

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- requests -------------------------------------------------------------------------------

    def _authorized(self, handler: Any) -> bool:
        header = handler.headers.get("Authorization") or ""
        if not header:
            handler._answer(401, {"detail": "Missing authorization header"})
            return False
        if header != f"Key {self.key}":
            handler._answer(401, {"detail": "No user found for Key ID and Secret"})
            return False
        return True

    def handle(self, h: Any, method: str) -> None:
        url = urlparse(h.path)
        path = url.path.strip("/")
        query = parse_qs(url.query)
        with self.lock:
            if path == "_emu/state":
                return h._answer(200, self.state())
            if method == "PUT" and path.startswith("_upload/"):
                token = path.split("/", 1)[1]
                if token not in self.pending_uploads:
                    return h._answer(403, None, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
                self.files[token] = (self.pending_uploads.pop(token), h._body())
                return h._answer(200, None, b"")
            if method == "GET" and path.startswith("files/"):
                token = path.split("/")[1]
                if token not in self.files:
                    return h._answer(404, None, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
                return h._answer(200, None, self.files[token][1], "application/octet-stream")
            if path.startswith("files/") and method in ("POST", "PUT"):
                return self._cdn(h, method, path)
            if not self._authorized(h):
                return None
            if method == "POST" and path == "storage/auth/token":
                h._body()
                return h._answer(200, {"token": self.cdn_token, "token_type": "Bearer", "base_url": self.base,
                                       "expires_at": "2999-01-01T00:00:00+00:00"})  # fmt: skip
            if method == "POST" and path == "storage/upload/initiate":
                body = json.loads(h._body() or b"{}")
                token = uuid.uuid4().hex
                name = str(body.get("file_name") or "upload.bin")
                self.pending_uploads[token] = name
                return h._answer(200, {"upload_url": f"{self.base}/_upload/{token}",
                                       "file_url": f"{self.base}/files/{token}/{name}"})
            if "/requests/" in path:
                app, rest = path.split("/requests/", 1)
                parts = rest.split("/")
                request = self.requests.get(parts[0])
                if request is None or request.app != app:
                    return h._answer(404, {"detail": f"Request {parts[0]} not found"})
                if method == "GET" and parts[1:] == ["status"]:
                    logs = (query.get("logs") or ["0"])[0].lower() in ("1", "true")
                    return h._answer(200, self._status(request, logs))
                if method == "GET" and parts[1:] == []:
                    return self._result(h, request)
                if method == "PUT" and parts[1:] == ["cancel"]:
                    if request.polls < len(request.queue) and not request.cancelled:
                        request.cancelled = True
                        return h._answer(202, {"status": "CANCELLATION_REQUESTED"})
                    return h._answer(400, {"status": "ALREADY_COMPLETED"})
                return h._answer(405, {"detail": "Method Not Allowed"})
            if method == "POST":
                return self._submit(h, path)
            return h._answer(404, {"detail": "Not Found"})

    def _cdn(self, h: Any, method: str, path: str) -> None:
        """fal's v3 CDN: one-shot and multipart uploads with the CDN token (the caller holds the lock)."""
        if h.headers.get("Authorization") != f"Bearer {self.cdn_token}":
            return h._answer(401, {"detail": "Invalid CDN token"})
        body = h._body()
        if method == "POST" and path in ("files/upload", "files/upload/multipart"):
            token, name = uuid.uuid4().hex, h.headers.get("X-Fal-File-Name") or "upload.bin"
            access = f"{self.base}/files/{token}/{name}"
            if path == "files/upload":
                self.files[token] = (name, body)
                return h._answer(200, {"access_url": access, "content_type": h.headers.get("Content-Type")})
            upload_id = uuid.uuid4().hex
            self.multipart[upload_id] = {"token": token, "name": name, "parts": {}}
            return h._answer(200, {"access_url": access, "uploadId": upload_id})
        rest = path.split("/multipart/", 1)[-1].split("/") if "/multipart/" in path else []
        upload = self.multipart.get(rest[0]) if rest else None
        if upload is None:
            return h._answer(404, {"detail": "No such upload"})
        if method == "PUT" and len(rest) == 2 and rest[1].isdigit():
            upload["parts"][int(rest[1])] = body
            h.send_response(200)
            h.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        if method == "POST" and rest[1:] == ["complete"]:
            parts = json.loads(body or b"{}").get("parts") or []
            numbers = sorted(int(p["partNumber"]) for p in parts)
            tags = {int(p["partNumber"]): str(p["etag"]).strip('"') for p in parts}
            if numbers != sorted(upload["parts"]) or any(
                tags[n] != hashlib.md5(upload["parts"][n]).hexdigest() for n in numbers
            ):
                return h._answer(400, {"detail": "parts do not match the uploaded ones"})
            self.files[upload["token"]] = (upload["name"], b"".join(upload["parts"][n] for n in numbers))
            del self.multipart[rest[0]]
            return h._answer(200, {"access_url": f"{self.base}/files/{upload['token']}/{upload['name']}"})
        return h._answer(405, {"detail": "Method Not Allowed"})

    def _submit(self, h: Any, app: str) -> None:
        try:
            body = json.loads(h._body() or b"{}")
        except ValueError:
            return h._answer(422, {"detail": [{"loc": ["body"], "msg": "Invalid JSON", "type": "value_error"}]})
        problems = self._validate(body)
        if problems:
            return h._answer(422, {"detail": problems})
        rid = str(uuid.uuid4())
        self.requests[rid] = Request(rid, app, body, list(self.queue))
        root = f"{self.base}/{app}/requests/{rid}"
        return h._answer(200, {
            "status": "IN_QUEUE",
            "request_id": rid,
            "response_url": root,
            "status_url": f"{root}/status",
            "cancel_url": f"{root}/cancel",
            "logs": None,
            "metrics": {},
            "queue_position": self.queue[0] if self.queue else 0,
        })

    def _validate(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The schema's checks: images_data_url required and a zip with images; steps an integer."""
        out: list[dict[str, Any]] = []
        url = body.get("images_data_url")
        if not isinstance(url, str):
            return [{"loc": ["body", "images_data_url"], "msg": "field required", "type": "value_error.missing"}]
        token = url.rsplit("/files/", 1)[-1].split("/")[0] if "/files/" in url else ""
        data = self.files.get(token, ("", b""))[1]
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            names = None
        if names is None:
            out.append({"loc": ["body", "images_data_url"], "msg": "could not download a zip archive from the URL",
                        "type": "value_error"})
        elif sum(n.lower().endswith(IMAGE_SUFFIXES) for n in names) < 1:
            out.append({"loc": ["body", "images_data_url"], "msg": "the archive has no images", "type": "value_error"})
        steps = body.get("steps", 1000)
        if not isinstance(steps, int) or steps < 1:
            out.append({"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"})
        return out

    def _status(self, r: Request, logs: bool) -> dict[str, Any]:
        self.status_polls += 1
        r.polls += 1
        base = {"request_id": r.id, "response_url": f"{self.base}/{r.app}/requests/{r.id}"}
        if r.cancelled:
            return {**base, "status": "COMPLETED", "logs": [] if logs else None, "metrics": {}}
        if r.polls <= len(r.queue):
            return {**base, "status": "IN_QUEUE", "queue_position": r.queue[r.polls - 1]}
        round_ = r.polls - len(r.queue)
        total = int(r.input.get("steps", 1000))
        if round_ == 1:
            self._log(r, "Preprocessing images and captions")
        if round_ <= self.progress_polls:
            step = total * round_ // (self.progress_polls + 1)
            self._log(r, f"Training: step {step}/{total}")
            return {**base, "status": "IN_PROGRESS", "logs": list(r.logs) if logs else None}
        if not any(f"{total}/{total}" in e["message"] for e in r.logs):
            self._log(r, f"Training: step {total}/{total}")
            self._log(r, "Saving LoRA weights")
        return {**base, "status": "COMPLETED", "logs": list(r.logs) if logs else None,
                "metrics": {"inference_time": 12.5}}

    def _log(self, r: Request, message: str) -> None:
        r.logs.append({"message": message, "level": "INFO", "source": "user",
                       "timestamp": datetime.now(UTC).isoformat()})

    def _result(self, h: Any, r: Request) -> None:
        done = r.polls > len(r.queue) + self.progress_polls
        if r.cancelled:
            return h._answer(400, {"detail": "Request was cancelled"})
        if not done:
            return h._answer(400, {"detail": "Request is still in progress"})
        if self.result_503s > 0:
            self.result_503s -= 1
            return h._answer(503, {"detail": "Service Unavailable"})
        if self.fail == "result":
            return h._answer(500, {"detail": "Training failed: CUDA error: an illegal memory access was encountered"})
        lora_token, config_token = f"lora-{r.id}", f"config-{r.id}"
        if lora_token not in self.files:
            self.files[lora_token] = ("pytorch_lora_weights.safetensors", lora_bytes(inert=self.inert))
            config = {"trigger_word": r.input.get("trigger_word"), "steps": r.input.get("steps", 1000)}
            self.files[config_token] = ("config.json", json.dumps(config).encode())
        lora, config_data = self.files[lora_token], self.files[config_token]
        return h._answer(200, {
            "diffusers_lora_file": {"url": f"{self.base}/files/{lora_token}/{lora[0]}", "content_type":
                                    "application/octet-stream", "file_name": lora[0], "file_size": len(lora[1])},
            "config_file": {"url": f"{self.base}/files/{config_token}/config.json", "content_type":
                            "application/octet-stream", "file_name": "config.json", "file_size": len(config_data[1])},
            "debug_preprocessed_output": None,
        })

    def state(self) -> dict[str, Any]:
        return {
            "requests": {k: {"app": r.app, "input": r.input, "polls": r.polls, "cancelled": r.cancelled}
                         for k, r in self.requests.items()},
            "uploads": {k: {"name": n, "size": len(b)} for k, (n, b) in self.files.items()},
            "status_polls": self.status_polls,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--key", default="emu-key-id:emu-secret")
    parser.add_argument("--fail", default="", choices=["", "result"])
    parser.add_argument("--inert", action="store_true", help="return an all-zero LoRA")
    args = parser.parse_args()
    emulator = FalEmulator(args.key, fail=args.fail)
    emulator.inert = args.inert
    print(f"fal emulator at {emulator.start(args.port)} (FAL_QUEUE_URL and FAL_STORAGE_URL)", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
