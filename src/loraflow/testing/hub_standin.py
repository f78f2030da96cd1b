"""A local stand-in for the Hugging Face Hub endpoints huggingface_hub calls to publish a model: repo
create, preupload, the LFS batch API with its basic and multipart uploads and verify, commit (NDJSON with
base64 regular files and `lfsFile` pointers), and file downloads (resolve). It keeps what arrives in memory
for inspection. Loopback only; `python -m loraflow.testing.hub_standin` serves it by hand.

Preupload answers as the Hub does: `lfs` for a binary file (a NUL byte in its sample), one over 10 MB, or a
name the Hub's default .gitattributes sends to LFS (*.safetensors, *.zip ...); `regular` otherwise. A real
LoRA therefore takes the LFS path, as it does on the Hub. huggingface_hub uploads LFS files through Xet
when hf_xet is installed; the stand-in has no Xet storage, so its users set HF_HUB_DISABLE_XET (the
fixtures do) and the client takes the LFS batch path that the Hub still serves."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".zip", ".tar", ".gz", ".npz", ".onnx", ".h5",
                ".msgpack", ".pkl", ".parquet", ".arrow", ".model")  # the Hub's default .gitattributes  # fmt: skip
LFS_ABOVE = 10 * 1000 * 1000  # bytes: larger files go to LFS whatever they are


def upload_mode(path: str, sample: bytes, size: int) -> str:
    if size > LFS_ABOVE or path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample:
        return "lfs"
    try:
        sample.decode()
    except UnicodeDecodeError:
        return "lfs"
    return "regular"


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)


class HubState:
    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.fail_next: list[int] = []  # status codes to answer the next commit requests with
        self.drop_next = 0  # commit requests whose connection is closed with no answer (a dropped link)
        self.requests: list[str] = []
        self.lfs: dict[str, bytes] = {}  # oid (sha256 hex) -> content, once uploaded and checked
        self.parts: dict[str, dict[int, bytes]] = {}  # oid -> multipart parts received
        self.multipart_chunk = 0  # > 0: LFS objects above it are uploaded in parts of this size


class _HubHandler(BaseHTTPRequestHandler):
    """What every route shares, and the LFS object storage (the Hub's presigned URLs: no token)."""

    hub: HubState

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any], etag: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        if etag is not None:
            self.send_header("ETag", f'"{etag}"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _complete(self, req: dict[str, Any]) -> None:
        oid, received = str(req.get("oid")), self.hub.parts.pop(str(req.get("oid")), {})
        numbers = [int(p["partNumber"]) for p in req.get("parts", [])]
        etags = [hashlib.md5(received.get(n, b"")).hexdigest() for n in numbers]
        data = b"".join(received.get(n, b"") for n in sorted(numbers))
        sent = [str(p["etag"]).strip('"') for p in req.get("parts", [])]
        if etags != sent or hashlib.sha256(data).hexdigest() != oid:
            self._send(400, {"error": "the parts do not make the object"})
            return
        self.hub.lfs[oid] = data
        self._send(200, {})

    def do_PUT(self) -> None:
        """LFS object storage (the Hub's presigned S3 URLs: no token): a whole object, or one part."""
        self.hub.requests.append(f"PUT {self.path}")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = self.path.split("?")[0].strip("/").split("/")  # _lfs/<oid>[/<part>]
        if parts[0] != "_lfs" or len(parts) not in (2, 3):
            self._send(404, {"error": f"no route {self.path}"})
            return
        oid = parts[1]
        if len(parts) == 3:
            self.hub.parts.setdefault(oid, {})[int(parts[2])] = body
            self._send(200, {}, etag=hashlib.md5(body).hexdigest())  # S3-style ETag: an MD5
            return
        if hashlib.sha256(body).hexdigest() != oid:
            self._send(400, {"error": "the content does not match its oid"})
            return
        self.hub.lfs[oid] = body
        self._send(200, {})


def make_handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        hub = state

        def do_GET(self) -> None:
            """Downloads: /<repo>/resolve/<revision>/<file>; a private repo needs the token, as on the Hub."""
            state.requests.append(f"GET {self.path}")
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                self._send(404, {"error": f"no route {self.path}"})
                return
            repo = state.repos.get(f"{parts[0]}/{parts[1]}")
            if repo is None or (repo.private and self.headers.get("Authorization") != f"Bearer {state.token}"):
                self._send(401, {"error": "Invalid username or password."})  # the Hub hides private repos so
                return
            data = repo.files.get("/".join(parts[4:]))
            if data is None:
                self._send(404, {"error": "Entry not found"})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            state.requests.append(f"POST {self.path}")
            if self.path.startswith("/_lfs/"):  # a multipart upload's completion
                self._complete(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
                return
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                self._send(401, {"error": "Invalid user token."})
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            if path == "/api/repos/create":
                req = json.loads(body)
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                url = f"http://{self.headers['Host']}/{repo_id}"
                if repo_id in state.repos:
                    self._send(409, {"error": "You already created this model repo", "url": url})
                    return
                private = req.get("visibility") == "private" if "visibility" in req else bool(req.get("private"))
                state.repos[repo_id] = Repo(private=private)
                self._send(200, {"url": url, "name": repo_id})
                return
            if path == "/api/validate-yaml":  # the client checks a model card's front matter before committing
                import yaml

                content = json.loads(body).get("content", "")
                front = content.split("---", 2)[1] if content.startswith("---") and content.count("---") >= 2 else ""
                try:
                    if not isinstance(yaml.safe_load(front) or {}, dict):
                        raise yaml.YAMLError("the front matter is not a mapping")
                    self._send(200, {"errors": [], "warnings": []})
                except yaml.YAMLError as exc:
                    self._send(400, {"errors": [{"message": f"invalid YAML: {exc}"}]})
                return
            if path.endswith(".git/info/lfs/objects/batch"):
                base = f"http://{self.headers['Host']}"
                git = base + path.removesuffix("/info/lfs/objects/batch")
                self._send(200, lfs_batch(state, json.loads(body), base, git))
                return
            if path.endswith(".git/info/lfs/objects/verify"):
                oid = json.loads(body).get("oid")
                self._send(200 if oid in state.lfs else 404, {"success": oid in state.lfs})
                return
            parts = path.strip("/").split("/")  # api/models/<ns>/<name>/<verb>/<revision>
            if len(parts) == 6 and parts[0] == "api" and parts[1] == "models":
                repo_id, verb = f"{parts[2]}/{parts[3]}", parts[4]
                repo = state.repos.get(repo_id)
                if repo is None:
                    self._send(404, {"error": "Repository not found"})
                    return
                if verb == "preupload":
                    files = json.loads(body)["files"]
                    modes = [upload_mode(f["path"], base64.b64decode(f.get("sample", "")), int(f["size"]))
                             for f in files]  # fmt: skip
                    self._send(200, {"files": [{"path": f["path"], "uploadMode": mode, "shouldIgnore": False,
                                                "oid": None} for f, mode in zip(files, modes, strict=True)]})
                    return
                if verb == "commit":
                    if state.drop_next > 0:
                        state.drop_next -= 1
                        self.close_connection = True  # no status line at all: the client sees it dropped
                        return
                    if state.fail_next:
                        self._send(state.fail_next.pop(0), {"error": "temporarily unavailable"})
                        return
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    header = next(item["value"] for item in lines if item["key"] == "header")
                    missing = [i["value"]["path"] for i in lines
                               if i["key"] == "lfsFile" and i["value"]["oid"] not in state.lfs]  # fmt: skip
                    if missing:
                        self._send(422, {"error": f"LFS pointer to an object never uploaded: {missing}"})
                        return
                    for item in lines:
                        if item["key"] == "file":
                            repo.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        elif item["key"] == "lfsFile":
                            repo.files[item["value"]["path"]] = state.lfs[item["value"]["oid"]]
                    oid = hashlib.sha1(body).hexdigest()
                    repo.commits.append({"summary": header["summary"], "oid": oid})
                    self._send(
                        200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}", "commitOid": oid}
                    )
                    return
            self._send(404, {"error": f"no route {path}"})

    return Handler


def lfs_batch(state: HubState, req: dict[str, Any], base: str, git: str) -> dict[str, Any]:
    """The git-lfs batch answer: upload (and verify) actions for objects not yet stored; in parts of
    `multipart_chunk` (a `chunk_size` header with one URL per part, completed by POSTing the ETags)."""
    objects = []
    for obj in req.get("objects", []):
        oid, size = str(obj["oid"]), int(obj["size"])
        entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        if oid not in state.lfs:
            chunk = state.multipart_chunk
            header: dict[str, str] = {}
            if 0 < chunk < size:
                header = {"chunk_size": str(chunk)}
                header.update({f"{n:05d}": f"{base}/_lfs/{oid}/{n}" for n in range(1, -(-size // chunk) + 1)})
            entry["actions"] = {
                "upload": {"href": f"{base}/_lfs/{oid}", "header": header},
                "verify": {"href": f"{git}/info/lfs/objects/verify", "header": {}},
            }
        objects.append(entry)
    return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}


class HubStandin:
    def __init__(self, token: str = "hf_standin_token") -> None:
        self.state = HubState(token)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubStandin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    with HubStandin() as hub:
        print(f"hub stand-in at {hub.url} (token hf_standin_token); Ctrl-C to stop")
        threading.Event().wait()
