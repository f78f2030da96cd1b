"""A ComfyUI Deploy emulator on 127.0.0.1: the volume/model routes loraflow uses, answering as the real
API does (comfy-deploy/api `src/api/routes/volumes.py`).

    POST /api/file {url, filename, folder_path}  -> {"message": "... download started"}; the file is fetched
                                                    in the background (a Hugging Face URL with the workspace's
                                                    own HF token); 409 "File <path> already exists" (and a failed
                                                    record, as check_file_existence leaves)
    GET  /api/volume/downloading-models          -> the workspace's model records not yet at 100 % and not
                                                    cancelled: {id, model_name, folder_path, status
                                                    (started | failed), download_progress, error_log, ...}
    GET  /api/volume/private-models              -> the volume's files: [{path, type (1 file), size, mtime}]
Every route needs `Authorization: Bearer <API key>` (401 otherwise). Inspection: GET /_emu/state.

    python -m loraflow.testing.comfydeploy_emulator --port 8767 --key KEY
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import httpx


class ComfyDeployEmulator:
    def __init__(self, key: str, hf_token: str | None = None, hf_host: str = "huggingface.co") -> None:
        self.key = key
        self.hf_token = hf_token  # the workspace's Hugging Face token (its user settings)
        self.hf_host = hf_host  # URLs at this host[:port] are "huggingface" uploads, fetched with hf_token
        self.models: list[dict[str, Any]] = []
        self.volume: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.base = ""
        self._server: ThreadingHTTPServer | None = None

    def start(self, port: int = 0) -> str:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                emulator.handle(self, "GET", b"")

            def do_POST(self) -> None:
                emulator.handle(self, "POST", self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}/api"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.base

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def handle(self, h: Any, method: str, body: bytes) -> None:
        path = urlparse(h.path).path.rstrip("/")
        if path == "/_emu/state":
            with self.lock:
                return h.answer(200, {"models": self.models, "volume": {k: len(v) for k, v in self.volume.items()}})
        if h.headers.get("Authorization") != f"Bearer {self.key}":
            return h.answer(401, {"detail": "Invalid or expired token"})
        if method == "POST" and path == "/api/file":
            return self._add_file(h, body)
        if method == "GET" and path == "/api/volume/downloading-models":
            with self.lock:
                return h.answer(200, [m for m in self.models
                                      if m["download_progress"] != 100 and m["status"] != "cancelled"])
        if method == "GET" and path == "/api/volume/private-models":
            with self.lock:
                now = time.time()
                return h.answer(200, [{"path": p, "type": 1, "size": len(b), "mtime": now}
                                      for p, b in sorted(self.volume.items())])
        return h.answer(404, {"detail": "Not Found"})

    def _add_file(self, h: Any, body: bytes) -> None:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return h.answer(422, {"detail": [{"loc": ["body"], "msg": "Invalid JSON", "type": "value_error"}]})
        missing = [k for k in ("url", "folder_path") if not isinstance(data.get(k), str)]
        if missing:
            return h.answer(422, {"detail": [{"loc": ["body", k], "msg": "field required", "type": "missing"}
                                             for k in missing]})
        url, folder = data["url"], data["folder_path"]
        filename = data.get("filename") or urlparse(url).path.rsplit("/", 1)[-1]
        if not filename or "." not in filename:
            return h.answer(400, {"detail": "No filename found"})
        full = f"{folder.strip('/')}/{filename}"
        upload_type = "huggingface" if urlparse(url).netloc == self.hf_host else "download-url"
        with self.lock:
            now = datetime.now(UTC).isoformat()
            if full in self.volume:  # as check_file_existence does: an error record, then 409
                self.models.append(self._record(filename, folder, upload_type, url, now, status="failed",
                                                error_log="File already exists"))
                return h.answer(409, {"detail": f"File {full} already exists"})
            model = self._record(filename, folder, upload_type, url, now, status="started", error_log=None)
            self.models.append(model)
        threading.Thread(target=self._download, args=(model, url, full), daemon=True).start()
        kind = "HuggingFace" if upload_type == "huggingface" else "Generic"
        return h.answer(200, {"message": f"{kind} model download started"})

    @staticmethod
    def _record(filename: str, folder: str, upload_type: str, url: str, now: str, **fields: Any) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "user_id": "user_emu", "org_id": None, "user_volume_id": "vol_emu",
                "model_name": filename, "folder_path": folder, "model_type": "custom", "upload_type": upload_type,
                "download_progress": 0, "user_url": url, "size": None, "created_at": now, "updated_at": now,
                **fields}

    def _download(self, model: dict[str, Any], url: str, full: str) -> None:
        headers = {}
        if model["upload_type"] == "huggingface" and self.hf_token:
            headers["Authorization"] = f"Bearer {self.hf_token}"
        try:
            response = httpx.get(url, headers=headers, follow_redirects=True, timeout=60)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            with self.lock:
                model.update(status="failed", error_log=str(exc), updated_at=datetime.now(UTC).isoformat())
            return
        with self.lock:
            self.volume[full] = response.content
            model.update(status="success", download_progress=100, size=len(response.content),
                         updated_at=datetime.now(UTC).isoformat())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--key", default="cd_emu_key")
    args = parser.parse_args()
    emulator = ComfyDeployEmulator(args.key)
    print(f"ComfyDeploy emulator at {emulator.start(args.port)} (COMFY_DEPLOY_API_URL)", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
