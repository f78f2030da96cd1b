"""A Vast.ai API emulator on 127.0.0.1 whose instances are real SSH endpoints.

It answers like the real REST API, quirks included (../shared/reference/vastai-providers.md §1.12):
Bearer or `api_key` auth with anonymous offer search, query-language filters with numbers as strings
and aliases, `dph_total` priced from `allocated_storage`, `new_contract` on create, `{"instances": {...}}`
vs `{"instances": null}`, `extra_env` as pairs, Docker-style `ports` only while running, trailing
whitespace in `public_ipaddr`, v1 paging by `next_token` with v0 list answering 410, 404/410 for a
snatched offer, a second DELETE answering `no_such_instance`, 429 bursts without Retry-After in both
body forms, and outbid instances that stop instead of vanishing.

Each created instance gets its own OpenSSH server (the fixture's or the system's `sshd`) with its own
HOME and `DATA_DIRECTORY`, reached through a TCP relay on loopback that can drop a connection on demand.
Destroying an instance kills every process started in it.

Faults and inspection live under `/_emu/` (not part of Vast's API):
    POST /_emu/faults {"snatch": 2, "rate_limit": 5, "boot_s": 1.0}
    POST /_emu/instances/ID/fail {"kind": "gone" | "exited" | "outbid" | "offline"}
    POST /_emu/instances/ID/drop {"after_bytes": 100000}
    GET  /_emu/state

    python -m loraflow.testing.vast_emulator --port 8765 --api-key KEY
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

MARKER = "LORAFLOW_EMU_INSTANCE"
ALIASES = {"cuda_vers": "cuda_max_good", "dph": "dph_total", "reliability2": "reliability"}

# (gpu_name, gpu_ram MB, dph_base, reliability, inet_down, cuda, geolocation, verified, num_gpus, gpu_frac)
CATALOG: list[tuple[str, int, float, float, float, float, str, bool, int, float]] = [
    ("RTX 3090", 24576, 0.16, 0.991, 800.0, 12.4, "Texas, US", True, 1, 1.0),
    ("RTX 4090", 24564, 0.29, 0.995, 900.0, 12.8, "Oregon, US", True, 1, 1.0),
    ("RTX 4090", 24564, 0.27, 0.982, 600.0, 12.8, "Quebec, CA", True, 1, 1.0),
    ("RTX 4090", 24564, 0.31, 0.999, 1500.0, 13.0, "Bavaria, DE", True, 1, 1.0),
    ("RTX 4090", 24564, 0.19, 0.62, 300.0, 12.4, ", US", False, 1, 1.0),  # new, unverified machine
    ("RTX 4090", 24564, 0.14, 0.997, 900.0, 12.8, "Oregon, US", True, 1, 0.25),  # a quarter of a machine
    ("RTX 5090", 32607, 0.55, 0.993, 2000.0, 13.0, "California, US", True, 1, 1.0),
    ("RTX A6000", 49140, 0.45, 0.996, 1000.0, 12.6, "Ohio, US", True, 1, 1.0),
    ("L40S", 46068, 0.62, 0.998, 2500.0, 12.8, "Virginia, US", True, 1, 1.0),
    ("A100 SXM4", 81920, 0.95, 0.999, 5000.0, 12.8, "Utah, US", True, 1, 1.0),
    ("H100 SXM", 81559, 1.85, 0.999, 8000.0, 13.0, "Texas, US", True, 1, 1.0),
    ("RTX 3090", 24576, 0.30, 0.99, 700.0, 12.4, "Texas, US", True, 2, 1.0),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_offers(start_id: int = 4_100_000) -> list[dict[str, Any]]:
    offers = []
    for i, (name, ram, dph, rel, down, cuda, geo, verified, n, frac) in enumerate(CATALOG):
        offers.append(
            {
                "id": start_id + i,
                "ask_contract_id": start_id + i,
                "machine_id": 20_000 + i,
                "host_id": 300 + i,
                "num_gpus": n,
                "gpu_name": name,
                "gpu_ram": ram,
                "gpu_total_ram": ram * n,
                "gpu_frac": frac,
                "gpu_arch": "nvidia",
                "cuda_max_good": cuda,
                "compute_cap": 890 if "40" in name else 860,
                "driver_version": "570.86.10",
                "cpu_cores": 32,
                "cpu_cores_effective": 8.0 * n,
                "cpu_ram": 64000,
                "disk_space": 500.0,
                "inet_up": down / 2,
                "inet_down": down,
                "inet_up_cost": 0.005,
                "inet_down_cost": 0.005,
                "direct_port_count": 20,
                "dph_base": round(dph * n, 4),
                "min_bid": round(dph * n * 0.5, 4),
                "storage_cost": 0.15,
                "reliability": rel,
                "reliability2": rel,
                "verified": verified,
                "verification": "verified" if verified else "unverified",
                "rentable": True,
                "rented": False,
                "external": False,
                "geolocation": geo,
                "dlperf": 40.0 * n,
                "score": 100.0 * rel / dph,
                "hosting_type": 0,
                "is_bid": False,
            }
        )
    return offers


def _coerce(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value.replace("_", " ") if value not in ("true", "false") else value == "true"
    return value


def _matches(row: dict[str, Any], key: str, ops: dict[str, Any]) -> bool:
    field_name = ALIASES.get(key, key)
    actual = row.get(field_name)
    for op, raw in ops.items():
        want = [_coerce(v) for v in raw] if isinstance(raw, list) else _coerce(raw)
        if field_name == "geolocation" and isinstance(actual, str):
            actual = actual.strip().split(",")[-1].strip() if actual else ""
        if op == "eq" and actual != want:
            return False
        if op == "neq" and actual == want:
            return False
        if op in ("gt", "gte", "lt", "lte"):
            if actual is None:
                return False
            if op == "gt" and not actual > want:
                return False
            if op == "gte" and not actual >= want:
                return False
            if op == "lt" and not actual < want:
                return False
            if op == "lte" and not actual <= want:
                return False
        if op == "in" and actual not in want:
            return False
        if op in ("notin", "nin") and actual in want:
            return False
        if op not in ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin", "nin"):
            raise ValueError(f"{op} is not a valid search op")
    return True


class Relay:
    """TCP relay (Vast's proxy/direct port) that can cut a connection after some bytes, once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.drop_after: int | None = None
        self.closed = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._conns += [client, upstream]
            budget = {"left": self.drop_after}
            self.drop_after = None
            threading.Thread(target=self._pump, args=(client, upstream, budget), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, {"left": None}), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, budget: dict[str, int | None]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if budget["left"] is not None:
                    budget["left"] -= len(data)
                    if budget["left"] <= 0:  # the connection drops mid-stream, as a flaky proxy does
                        break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        for s in self._conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


@dataclass
class Instance:
    id: int
    offer: dict[str, Any]
    label: str
    image: str
    disk: float
    env: dict[str, str]
    runtype: str
    onstart: str
    api_key: str
    created: float
    boot_s: float
    root: Path
    status: str | None = None  # set by a fault: exited / stopped / offline
    intended: str = "running"
    sshd: subprocess.Popen[bytes] | None = None
    relay: Relay | None = None
    authorized_keys: list[str] = field(default_factory=list)


class Emulator:
    def __init__(
        self,
        api_key: str,
        work: Path,
        sshd: str = "/usr/sbin/sshd",
        boot_s: float = 0.5,
        extra_authorized_keys: list[str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.work = work
        self.sshd_bin = sshd
        self.boot_s = boot_s
        self.offers = make_offers()
        self.instances: dict[int, Instance] = {}
        self.destroyed: set[int] = set()
        self.destroyed_by_instance: set[int] = set()  # destroyed with their own CONTAINER_API_KEY
        self.ssh_keys: list[dict[str, Any]] = [
            {"id": 1 + i, "public_key": k.strip()} for i, k in enumerate(extra_authorized_keys or [])
        ]
        self.next_id = 31_000_001
        self.token = uuid.uuid4().hex[:12]
        self.snatch = 0
        self.rate_limit = 0
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
        if age < inst.boot_s:
            return "loading"
        self._start_sshd(inst)
        return "running"

    def _start_sshd(self, inst: Instance) -> None:
        if inst.sshd is not None:
            return
        home = inst.root / "root"
        home.mkdir(parents=True, exist_ok=True)
        (inst.root / "workspace").mkdir(exist_ok=True)
        keys = inst.root / "authorized_keys"
        keys.write_text("".join(k + "\n" for k in inst.authorized_keys))
        keys.chmod(0o600)
        port = free_port()
        config = inst.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {port}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {keys}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PidFile none",
                    "MaxSessions 64",
                    "MaxStartups 64",
                    f"SetEnv HOME={home} DATA_DIRECTORY={inst.root / 'workspace'} CONTAINER_ID={inst.id} "
                    f"{MARKER}={self.marker(inst)}",
                    "",
                ]
            )
        )
        inst.sshd = subprocess.Popen(
            [self.sshd_bin, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(inst.root / "sshd.log", "ab"),  # noqa: SIM115
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
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
        needle = f"{MARKER}={self.marker(inst)}".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue
        if inst.relay:
            inst.relay.close()
            inst.relay = None
        if inst.sshd:
            inst.sshd.kill()
            inst.sshd.wait()
            inst.sshd = None

    def destroy(self, inst_id: int) -> bool:
        with self.lock:
            inst = self.instances.pop(inst_id, None)
            if inst is None:
                return False
            self.destroyed.add(inst_id)
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
            inst.status, inst.intended = "stopped", "stopped"
        else:
            inst.status = {"exited": "exited", "offline": "offline"}[kind]

    def close(self) -> None:
        for inst_id in list(self.instances):
            self.destroy(inst_id)

    def row(self, inst: Instance) -> dict[str, Any]:
        o = inst.offer
        status = self.actual_status(inst)
        running = status == "running"
        storage = round(o["storage_cost"] * inst.disk / 720, 7)
        cur = "stopped" if inst.intended == "stopped" else "running"
        row = {
            "id": inst.id,
            "machine_id": o["machine_id"],
            "host_id": o["host_id"],
            "bundle_id": o["id"],
            "actual_status": status,
            "intended_status": inst.intended,
            "cur_state": cur,
            "next_state": cur,
            "status_msg": f"success, running {inst.image}/ssh" if running else "Pulling image\n",
            "label": inst.label,
            "image_uuid": inst.image,
            "image_runtype": inst.runtype,
            "image_args": [],
            "extra_env": [[k, v] for k, v in inst.env.items()],
            "onstart": inst.onstart,
            "public_ipaddr": "127.0.0.1\n",
            "local_ipaddrs": "10.2.0.4 172.17.0.1 \n",
            "ssh_host": "127.0.0.1",
            "ssh_port": inst.relay.port if inst.relay else None,
            "ssh_idx": "4",
            "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(inst.relay.port)}]}
            if running and inst.relay
            else None,
            "start_date": inst.created,
            "num_gpus": o["num_gpus"],
            "gpu_name": o["gpu_name"],
            "gpu_ram": o["gpu_ram"],
            "gpu_totalram": o["gpu_total_ram"],
            "gpu_util": 0.0,
            "cuda_max_good": o["cuda_max_good"],
            "disk_space": inst.disk,
            "inet_down": o["inet_down"],
            "inet_up": o["inet_up"],
            "geolocation": o["geolocation"],
            "reliability2": o["reliability"],
            "dph_base": o["dph_base"],
            "storage_total_cost": storage,
            "dph_total": round(o["dph_base"] + storage, 7),
            "search": {"gpuCostPerHour": o["dph_base"], "diskHour": storage, "totalHour": o["dph_base"] + storage},
            "instance": {
                "gpuCostPerHour": o["dph_base"] if running else 0,
                "diskHour": storage,
                "totalHour": (o["dph_base"] if running else 0) + storage,
            },
        }
        return row

    # --- request handling ------------------------------------------------------------------------

    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        parsed = urlparse(url)
        path = parsed.path if parsed.path.endswith("/") else parsed.path + "/"
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        with self.lock:
            self.requests.append((method, path))
        if path.startswith("/_emu/"):
            return self._admin(method, path, body)
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
            return self._search(data.get("q", data))
        auth = headers.get("authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else query.get("api_key", "")
        parts = [p for p in path.split("/") if p]
        if key != self.api_key:
            # An instance's own key (CONTAINER_API_KEY inside it) acts on that instance only.
            own = next((i for i in self.instances.values() if key and i.api_key == key), None)
            target = parts[3] if parts[:3] == ["api", "v0", "instances"] and len(parts) == 4 else None
            if own is None:
                return 401, {"success": False, "error": "auth_error", "msg": "Invalid user key"}
            if target != str(own.id) or method not in ("GET", "DELETE"):
                return 403, {"success": False, "error": "forbidden", "msg": "instance key: not this instance"}
            if method == "DELETE":
                self.destroyed_by_instance.add(own.id)
        if path == "/api/v0/ssh/" and method == "GET":
            return 200, [{"id": k["id"], "user_id": 1, "key": k["public_key"]} for k in self.ssh_keys]
        if path == "/api/v0/ssh/" and method == "POST":
            entry = {"id": len(self.ssh_keys) + 1, "public_key": str(data.get("ssh_key", "")).strip()}
            self.ssh_keys.append(entry)
            return 200, {"success": True, "key": {**entry, "user_id": 1}}
        if parts[:3] == ["api", "v0", "asks"] and method == "PUT" and len(parts) == 4:
            return self._create(int(parts[3]), data)
        if path == "/api/v0/instances/" and method == "GET":
            return 410, {
                "success": False,
                "error": "deprecated_endpoint",
                "msg": "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead.",
            }
        if path == "/api/v1/instances/" and method == "GET":
            return self._list(query)
        if parts[:3] == ["api", "v0", "instances"] and len(parts) == 4 and parts[3].isdigit():
            inst_id = int(parts[3])
            if method == "GET":
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
                inst = self.instances.get(inst_id)
                if inst is None:
                    return 404, {
                        "success": False,
                        "error": "no_such_instance",
                        "msg": "Instance with that ID does not exist.",
                    }
                if "label" in data:
                    inst.label = str(data["label"])
                return 200, {"success": True}
        return 404, {"success": False, "error": "not_found", "msg": f"no route {method} {path}"}

    def _search(self, q: dict[str, Any]) -> tuple[int, Any]:
        q = dict(q)
        order = q.pop("order", [["score", "desc"]])
        limit = int(q.pop("limit", 64) or 64)
        kind = q.pop("type", "on-demand")
        if kind not in ("on-demand", "ondemand", "bid", "reserved", "interruptible"):
            return 400, {"error": "invalid_request", "msg": f"invalid type {kind}"}
        storage = float(q.pop("allocated_storage", 5.0))
        for ignored in ("disable_bundling", "target_reliability", "extra_ids", "show_incompatible"):
            q.pop(ignored, None)
        q.setdefault("rented", {"eq": False})
        rows = []
        with self.lock:
            rented = {i.offer["id"] for i in self.instances.values()}
            for offer in self.offers:
                row = dict(offer)
                row["rented"] = offer["id"] in rented
                row["storage_total_cost"] = round(row["storage_cost"] * storage / 720, 7)
                row["dph_total"] = round(row["dph_base"] + row["storage_total_cost"], 7)
                if kind in ("bid", "interruptible"):
                    row["dph_base"] = row["min_bid"]
                    row["is_bid"] = True
                try:
                    if all(_matches(row, k, ops) for k, ops in q.items() if isinstance(ops, dict)):
                        rows.append(row)
                except ValueError as exc:
                    return 400, {"error": "invalid_request", "msg": str(exc)}
        for key, direction in reversed(order):
            rows.sort(key=lambda r, k=key: (r.get(ALIASES.get(k, k)) is None, r.get(ALIASES.get(k, k)) or 0),
                      reverse=direction == "desc")  # fmt: skip
        return 200, {"offers": rows[:limit]}

    def _create(self, ask_id: int, data: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            offer = next((o for o in self.offers if o["id"] == ask_id), None)
            rented = {i.offer["id"] for i in self.instances.values()}
            if offer is not None and self.snatch > 0:
                self.snatch -= 1
                self.offers.remove(offer)  # somebody else rented it a moment ago
                offer = None
            if offer is None or ask_id in rented:
                if data.get("cancel_unavail"):
                    return 410, {
                        "success": False,
                        "error": "no_such_ask",
                        "msg": f"error 410/3907: no_such_ask Instance type {ask_id} is no longer available.",
                        "ask_id": ask_id,
                    }
                return 404, {
                    "success": False,
                    "error": "invalid_args",
                    "msg": f"error 404/3603: no_such_ask Instance type by id {ask_id} is not available.",
                    "ask_id": ask_id,
                }
            if not data.get("image") and not data.get("template_hash_id"):
                return 400, {"success": False, "error": "invalid_args", "msg": "error 400/3467: Invalid args: image"}
            if float(data.get("disk", 10)) < 8:
                return 400, {"success": False, "error": "invalid_args", "msg": "error 400/3467: disk must be >= 8"}
            if len(str(data.get("label", ""))) > 256:
                return 400, {"success": False, "error": "label_too_long", "msg": "label too long"}
            env = data.get("env") or {}
            if isinstance(env, str):  # the docker-flag string form some clients send
                tokens, env = env.split(), {}
                for i, tok in enumerate(tokens):
                    if tok == "-e" and i + 1 < len(tokens) and "=" in tokens[i + 1]:
                        k, v = tokens[i + 1].split("=", 1)
                        env[k] = v
            inst_id = self.next_id
            self.next_id += 1
            root = self.work / f"instance-{inst_id}"
            root.mkdir(parents=True, exist_ok=True)
            inst = Instance(
                id=inst_id,
                offer=offer,
                label=str(data.get("label", "")),
                image=str(data.get("image", "")),
                disk=float(data.get("disk", 10)),
                env={str(k): str(v) for k, v in env.items()},
                runtype=str(data.get("runtype") or "ssh ssh_direc ssh_proxy"),
                onstart=str(data.get("onstart", "")),
                api_key=base64.b16encode(os.urandom(16)).decode().lower(),
                created=time.time(),
                boot_s=self.boot_s,
                root=root,
                authorized_keys=[k["public_key"] for k in self.ssh_keys],
            )
            bid = data.get("price")
            if bid is not None and float(bid) < offer["min_bid"]:
                inst.status, inst.intended = "stopped", "stopped"
                self.instances[inst_id] = inst
                return 400, {
                    "success": False,
                    "error": "invalid_price",
                    "msg": "bid below the minimum; instance created stopped",
                    "new_contract": inst_id,
                }
            self.instances[inst_id] = inst
            return 200, {"success": True, "new_contract": inst_id, "instance_api_key": inst.api_key}

    def _list(self, query: dict[str, str]) -> tuple[int, Any]:
        limit = int(query.get("limit", 25))
        limit = 5 if limit <= 0 else min(limit, 25)
        after = 0
        if query.get("after_token"):
            try:
                after = int(json.loads(base64.urlsafe_b64decode(query["after_token"]))["id"])
            except (ValueError, KeyError, TypeError):
                return 400, {"success": False, "error": "invalid_token", "msg": "invalid after_token"}
        filters = json.loads(query.get("select_filters", "{}"))
        for key in filters:
            if key in ("dph_total", "num_gpus"):
                return 400, {
                    "error": "invalid_request",
                    "msg": f"Error in query parameters: {key} is not a valid search key",
                }
        with self.lock:
            rows = [self.row(i) for i in sorted(self.instances.values(), key=lambda i: i.id)]
        rows = [r for r in rows if all(_matches(r, k, ops) for k, ops in filters.items())]
        page = [r for r in rows if r["id"] > after][:limit]
        more = len([r for r in rows if r["id"] > after]) > limit
        token = base64.urlsafe_b64encode(json.dumps({"v": 2, "id": page[-1]["id"]}).encode()).decode() if more else None
        labels: dict[str, int] = {}
        for r in rows:
            labels[r["label"] or ""] = labels.get(r["label"] or "", 0) + 1
        return 200, {
            "success": True,
            "instances_found": len(page),
            "total_instances": len(rows),
            "label_counts": labels,
            "next_token": token,
            "instances": page,
        }

    def _admin(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        data = json.loads(body) if body.strip() else {}
        parts = [p for p in path.split("/") if p]
        if path == "/_emu/state/":
            with self.lock:
                return 200, {
                    "instances": {str(i): self.row(inst) for i, inst in self.instances.items()},
                    "destroyed": sorted(self.destroyed),
                    "offers": len(self.offers),
                    "requests": len(self.requests),
                }
        if path == "/_emu/faults/" and method == "POST":
            with self.lock:
                self.snatch = int(data.get("snatch", self.snatch))
                self.rate_limit = int(data.get("rate_limit", self.rate_limit))
                self.boot_s = float(data.get("boot_s", self.boot_s))
            return 200, {"success": True}
        if len(parts) == 4 and parts[1] == "instances" and parts[2].isdigit():
            inst = self.instances.get(int(parts[2]))
            if inst is None:
                return 404, {"error": "no_such_instance"}
            if parts[3] == "fail":
                self.fail(inst.id, str(data.get("kind", "gone")))
                return 200, {"success": True}
            if parts[3] == "drop":
                self._start_sshd(inst)
                assert inst.relay is not None
                inst.relay.drop_after = int(data.get("after_bytes", 0))
                return 200, {"success": True}
        return 404, {"error": "not_found"}


def make_server(emulator: Emulator, port: int = 0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                status, payload = emulator.handle(self.command, self.path, headers, body)
            except Exception as exc:  # a bug in the emulator must look like a 500, as a real server's would
                status, payload = 500, {"success": False, "error": "server_error", "msg": repr(exc)}
            text = payload if isinstance(payload, str) else json.dumps(payload)
            raw = text.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):  # an instance's own DELETE dies with the instance
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Vast.ai API emulator on 127.0.0.1 with real SSH instances")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=os.environ.get("VAST_API_KEY", "emulator-key"))
    parser.add_argument("--work", default=None, help="folder for instance homes (default: a temp folder)")
    parser.add_argument("--sshd", default=shutil.which("sshd") or "/usr/sbin/sshd")
    parser.add_argument("--boot-s", type=float, default=3.0)
    parser.add_argument("--authorized-key", action="append", default=[], help="public key file baked into instances")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="vast-emu-"))
    keys = [Path(k).read_text() for k in args.authorized_key]
    emulator = Emulator(args.api_key, work, sshd=args.sshd, boot_s=args.boot_s, extra_authorized_keys=keys)
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
