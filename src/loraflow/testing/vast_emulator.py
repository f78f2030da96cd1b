"""A Vast.ai API emulator on 127.0.0.1 whose instances are real SSH endpoints.

It answers like the real REST API, quirks included (../shared/reference/vastai-providers.md §1.12):
Bearer or `api_key` auth with anonymous offer search, query-language filters with numbers as strings
and aliases, `dph_total` priced from `allocated_storage`, `new_contract` on create, `{"instances": {...}}`
vs `{"instances": null}`, `extra_env` as pairs, Docker-style `ports` only while running, trailing
whitespace in `public_ipaddr`, v1 paging by `next_token` with v0 list answering 410, 404/410 for a
snatched offer, a second DELETE answering `no_such_instance`, 429 bursts without Retry-After in both
body forms, and outbid instances that stop instead of vanishing. Multi-GPU machines are offered a GPU at a
time (gpu_frac < 1, vast_offers.py); an instance pulls its image for `pull_s` before it boots; the show
endpoint is rate limited per key (429 with Retry-After, `rate_scale` shortens the threshold for tests); an
instance's own key may stop, show, label, destroy it and read its logs or run ls/rm/du (vast_container.py).

Each created instance gets its own OpenSSH server (the fixture's or the system's `sshd`) with its own
HOME and `DATA_DIRECTORY`, reached through a TCP relay on loopback that can drop a connection on demand.
Destroying an instance kills every process started in it.

Faults and inspection live under `/_emu/` (not part of Vast's API):
    POST /_emu/faults {"snatch": 2, "rate_limit": 5, "boot_s": 1.0, "pull_s": 20, "rate_scale": 1.0,
                       "refuse_self_destroy": true}
    POST /_emu/instances/ID/fail {"kind": "gone" | "exited" | "outbid" | "offline"}
    POST /_emu/instances/ID/drop {"after_bytes": 100000}
    GET  /_emu/state   (with each instance's `meter`: what Vast bills it, GPU while running, storage while it exists)

    python -m loraflow.testing.vast_emulator --port 8765 --api-key KEY
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from loraflow.testing.containers import free_port as free_port  # re-exported: tests and benches import it here
from loraflow.testing.containers import kill_marked, start_sshd
from loraflow.testing.emulator_http import serve
from loraflow.testing.vast_admin import admin
from loraflow.testing.vast_container import execute, instance_key_allows, put_instance, request_logs, throttled
from loraflow.testing.vast_instances import Instance, Meter, create_instance, instance_row, list_instances, meter
from loraflow.testing.vast_offers import make_offers, search_offers
from loraflow.testing.vast_relay import Relay

MARKER = "LORAFLOW_EMU_INSTANCE"


class Emulator:
    def __init__(
        self,
        api_key: str,
        work: Path,
        sshd: str = "/usr/sbin/sshd",
        boot_s: float = 0.5,
        extra_authorized_keys: list[str] | None = None,
        pull_s: float = 0.0,
        rate_scale: float = 1.0,
    ) -> None:
        self.api_key = api_key
        self.work = work
        self.sshd_bin = sshd
        self.boot_s = boot_s
        self.pull_s = pull_s  # how long an instance stays `loading`, pulling its image, before it boots
        self.rate_scale = rate_scale  # 1.0: the real thresholds; smaller for tests; 0: no rate limit
        self.last_call: dict[tuple[str, str], float] = {}
        self.throttled = 0  # 429s answered for going over a rate limit
        self.results: dict[str, str] = {}  # result_url token -> text (logs, execute)
        self.offers = make_offers()
        self.instances: dict[int, Instance] = {}
        self.destroyed: set[int] = set()
        self.destroyed_by_instance: set[int] = set()  # destroyed with their own CONTAINER_API_KEY
        self.born: dict[int, float] = {}  # when each instance was created: its meter starts there
        self.metered: dict[int, Meter] = {}  # what each destroyed instance was billed
        self.ssh_keys: list[dict[str, Any]] = [
            {"id": 1 + i, "public_key": k.strip()} for i, k in enumerate(extra_authorized_keys or [])
        ]
        self.next_id = 31_000_001
        self.token = uuid.uuid4().hex[:12]
        self.snatch = 0
        self.rate_limit = 0
        self.refuse_self_destroy = False  # an instance's DELETE with its own key answers 503 (the API is down)
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        work.mkdir(parents=True, exist_ok=True)
        self.host_key = work / "ssh_host_ed25519_key"
        if not self.host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True) if os.geteuid() == 0 else None

    # --- instances -------------------------------------------------------------------------------

    def actual_status(self, inst: Instance) -> str | None:
        if inst.status:
            return inst.status
        age = time.time() - inst.created
        if age < inst.boot_s / 2:
            return None
        if age < inst.boot_s + inst.pull_s:
            return "loading"
        self._start_sshd(inst)
        return "running"

    def _start_sshd(self, inst: Instance) -> None:
        if inst.sshd is not None:
            return
        home = inst.root / "root"
        home.mkdir(parents=True, exist_ok=True)
        (inst.root / "workspace").mkdir(exist_ok=True)
        inst.sshd, port = start_sshd(
            inst.root,
            self.host_key,
            inst.authorized_keys,
            {
                "HOME": str(home),
                "DATA_DIRECTORY": str(inst.root / "workspace"),
                "CONTAINER_ID": str(inst.id),
                MARKER: self.marker(inst),
            },
            self.sshd_bin,
        )
        inst.relay = Relay(port)
        self._onstart(inst, home)

    def _onstart(self, inst: Instance, home: Path) -> None:
        """Run the create call's `onstart` once the instance runs, with the environment Vast.ai gives a
        container (CONTAINER_ID, CONTAINER_API_KEY, the create call's env); it dies with the instance."""
        if not inst.onstart.strip():
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "DATA_DIRECTORY": str(inst.root / "workspace"),
            "CONTAINER_ID": str(inst.id),
            "CONTAINER_API_KEY": inst.api_key,
            **inst.env,
            MARKER: self.marker(inst),
        }
        with open(inst.root / "onstart.log", "ab") as log:
            subprocess.Popen(
                ["/bin/sh", "-c", inst.onstart], env=env, cwd=home, stdout=log, stderr=log, start_new_session=True
            )

    def marker(self, inst: Instance) -> str:
        """Unique across emulators: instance ids restart at 31000001 in each, and one emulator's destroy
        must never kill what another emulator's instance (a test running beside this one) started."""
        return f"{self.token}-{inst.id}"

    def _kill_processes(self, inst: Instance) -> None:
        """Everything started in the instance (found by the marker in its environment) dies with it."""
        kill_marked(f"{MARKER}={self.marker(inst)}")
        if inst.relay:
            inst.relay.close()
            inst.relay = None
        if inst.sshd:
            inst.sshd.kill()
            inst.sshd.wait()
            inst.sshd = None

    def stop(self, inst: Instance) -> None:
        """The container stops (its processes end); the instance stays, billing its disk, until started."""
        self._kill_processes(inst)
        inst.halt(time.time())
        inst.status, inst.intended = "stopped", "stopped"

    def meter(self, inst_id: int) -> Meter:
        """What the instance was billed (destroyed) or is billed so far (alive)."""
        with self.lock:
            if inst_id in self.metered:
                return self.metered[inst_id]
            inst = self.instances[inst_id]
            return meter(inst, self.born.get(inst_id, inst.created), None)

    def destroy(self, inst_id: int) -> bool:
        with self.lock:
            inst = self.instances.pop(inst_id, None)
            if inst is None:
                return False
            self.destroyed.add(inst_id)
            self.metered[inst_id] = meter(inst, self.born.get(inst_id, inst.created), time.time())
        self._kill_processes(inst)
        shutil.rmtree(inst.root, ignore_errors=True)
        return True

    def fail(self, inst_id: int, kind: str) -> None:
        inst = self.instances[inst_id]
        if kind == "gone":
            self.destroy(inst_id)
            return
        self._kill_processes(inst)
        if kind == "outbid":
            self.stop(inst)
        else:
            inst.halt(time.time())
            inst.status = {"exited": "exited", "offline": "offline"}[kind]

    def close(self) -> None:
        for inst_id in list(self.instances):
            self.destroy(inst_id)

    def row(self, inst: Instance) -> dict[str, Any]:
        return instance_row(inst, self.actual_status(inst))

    # --- request handling ------------------------------------------------------------------------

    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[Any, ...]:
        """(status, payload) or (status, payload, headers)."""
        parsed = urlparse(url)
        path = parsed.path if parsed.path.endswith("/") else parsed.path + "/"
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        with self.lock:
            self.requests.append((method, path))
        if path.startswith("/_emu/"):
            return admin(self, method, path, body)
        with self.lock:
            if self.rate_limit > 0:
                self.rate_limit -= 1
                if self.rate_limit % 2:
                    return 429, "API requests too frequent: endpoint threshold=4.5"
                return 429, {"detail": "API requests too frequent endpoint threshold=4.5"}
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            return 400, {"error": "invalid_request", "msg": "Invalid json body"}
        if path in ("/api/v0/bundles/", "/api/v0/search/asks/"):
            if method == "GET" and "q" in query:
                data = json.loads(query["q"])
            return search_offers(self, data.get("q", data))
        auth = headers.get("authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else query.get("api_key", "")
        parts = [p for p in path.split("/") if p]
        if key != self.api_key:
            # An instance's own key (CONTAINER_API_KEY inside it) acts on that instance only.
            own = next((i for i in self.instances.values() if key and i.api_key == key), None)
            if own is None:
                return 401, {"success": False, "error": "auth_error", "msg": "Invalid user key"}
            if not instance_key_allows(method, parts, own.id):
                return 403, {"success": False, "error": "forbidden", "msg": "instance key: not this instance"}
            if method == "DELETE" and self.refuse_self_destroy:
                return 503, {"success": False, "error": "unavailable", "msg": "try again later"}
            if method == "DELETE":
                self.destroyed_by_instance.add(own.id)
        if path == "/api/v0/ssh/" and method == "GET":
            return 200, [{"id": k["id"], "user_id": 1, "key": k["public_key"]} for k in self.ssh_keys]
        if path == "/api/v0/ssh/" and method == "POST":
            entry = {"id": len(self.ssh_keys) + 1, "public_key": str(data.get("ssh_key", "")).strip()}
            self.ssh_keys.append(entry)
            return 200, {"success": True, "key": {**entry, "user_id": 1}}
        if parts[:3] == ["api", "v0", "asks"] and method == "PUT" and len(parts) == 4:
            return create_instance(self, int(parts[3]), data)
        if path == "/api/v0/instances/" and method == "GET":
            return 410, {
                "success": False,
                "error": "deprecated_endpoint",
                "msg": "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead.",
            }
        if path == "/api/v1/instances/" and method == "GET":
            return list_instances(self, query)
        host = headers.get("host", "127.0.0.1")
        if len(parts) == 5 and parts[:3] == ["api", "v0", "instances"] and parts[4].isdigit() and method == "PUT":
            inst = self.instances.get(int(parts[4]))
            if parts[3] == "request_logs":
                return request_logs(self, inst, data, host)
            if parts[3] == "command":
                return execute(self, inst, data, host)
        if parts[:3] == ["api", "v0", "instances"] and len(parts) == 4 and parts[3].isdigit():
            inst_id = int(parts[3])
            if method == "GET":
                limited = throttled(self, key, "show_instance")
                if limited is not None:
                    return limited
                inst = self.instances.get(inst_id)
                return 200, {"instances": self.row(inst) if inst else None}
            if method == "DELETE":
                if self.destroy(inst_id):
                    return 200, {"success": True}
                return 404, {
                    "success": False,
                    "error": "no_such_instance",
                    "msg": "Instance with that ID does not exist.",
                }
            if method == "PUT":
                return put_instance(self, self.instances.get(inst_id), data)
        return 404, {"success": False, "error": "not_found", "msg": f"no route {method} {path}"}


def make_server(emulator: Emulator, port: int = 0) -> ThreadingHTTPServer:
    return serve(emulator.handle, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Vast.ai API emulator on 127.0.0.1 with real SSH instances")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=os.environ.get("VAST_API_KEY", "emulator-key"))
    parser.add_argument("--work", default=None, help="folder for instance homes (default: a temp folder)")
    parser.add_argument("--sshd", default=shutil.which("sshd") or "/usr/sbin/sshd")
    parser.add_argument("--boot-s", type=float, default=3.0)
    parser.add_argument("--pull-s", type=float, default=20.0, help="seconds an instance spends pulling its image")
    parser.add_argument("--authorized-key", action="append", default=[], help="public key file baked into instances")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="vast-emu-"))
    keys = [Path(k).read_text() for k in args.authorized_key]
    emulator = Emulator(args.api_key, work, sshd=args.sshd, boot_s=args.boot_s, extra_authorized_keys=keys,
                        pull_s=args.pull_s)
    server = make_server(emulator, args.port)
    print(f"Vast.ai emulator on http://127.0.0.1:{server.server_port}  (VAST_URL for loraflow)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
