"""A local stand-in for the Hugging Face Hub endpoints huggingface_hub calls to publish a model: repo
create, preupload and commit (NDJSON with base64 files), and file downloads (resolve). It keeps what
arrives in memory for inspection. Loopback only; `python -m loraflow.testing.hub_standin` serves it by hand."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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
        self.requests: list[str] = []


def make_handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

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
            parts = path.strip("/").split("/")  # api/models/<ns>/<name>/<verb>/<revision>
            if len(parts) == 6 and parts[0] == "api" and parts[1] == "models":
                repo_id, verb = f"{parts[2]}/{parts[3]}", parts[4]
                repo = state.repos.get(repo_id)
                if repo is None:
                    self._send(404, {"error": "Repository not found"})
                    return
                if verb == "preupload":
                    files = json.loads(body)["files"]
                    self._send(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                for f in files
                            ]
                        },
                    )
                    return
                if verb == "commit":
                    if state.fail_next:
                        self._send(state.fail_next.pop(0), {"error": "temporarily unavailable"})
                        return
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    header = next(item["value"] for item in lines if item["key"] == "header")
                    for item in lines:
                        if item["key"] == "file":
                            repo.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    oid = hashlib.sha1(body).hexdigest()
                    repo.commits.append({"summary": header["summary"], "oid": oid})
                    self._send(
                        200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}", "commitOid": oid}
                    )
                    return
            self._send(404, {"error": f"no route {path}"})

    return Handler


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
