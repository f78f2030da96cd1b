"""A RunPod GraphQL emulator on 127.0.0.1 whose pods are real SSH endpoints (for `RUNPOD_API_BASE_URL`).

It serves `POST /graphql` as RunPod does: `Authorization: Bearer <key>`, 401 for an unknown key, and every
other failure as HTTP 200 with an `errors` array (the SDK raises QueryError from it). Requests are
parsed, validated and executed by graphql-core against runpod_schema.SDL, so whatever the `runpod` SDK
sends is judged as a GraphQL server would. Covered: `gpuTypes` (prices, `lowestPrice` per GPU count),
`pod`, `myself { pods }`, `podFindAndDeployOnDemand`, `podRentInterruptable` (a bid under the minimum is
refused), `podStop`, `podTerminate`.

A pod's `runtime` is null for `boot_s`; then its container starts: an OpenSSH server that accepts the
pod's `PUBLIC_KEY` (what RunPod's images' /start.sh does), mapped as `22/tcp` on a public IP, and the
pod's `dockerArgs` run as its command with the pod's env plus RUNPOD_POD_ID and a pod-scoped
RUNPOD_API_KEY, which may query, stop or terminate that pod only. The pod's image is a RunPod image: its
/start.sh is a file of the pod's own that stays up (sshd is the emulator's). Terminating kills everything the pod
started. A stopped pod (`podStop`, or a spot pod taken back) is EXITED with no runtime; a terminated one
is gone (`pod` answers null).

Faults and inspection (not RunPod's API):
    POST /_emu/faults {"no_capacity": 2, "boot_s": 1.0}
    POST /_emu/pods/ID/fail {"kind": "gone" | "exited"}
    GET  /_emu/state

    python -m loraflow.testing.runpod_emulator --port 8766 --api-key KEY
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from graphql import build_schema, graphql_sync

from loraflow.testing.containers import kill_marked, start_sshd
from loraflow.testing.emulator_http import serve
from loraflow.testing.runpod_schema import SDL, gpu_types

MARKER = "LORAFLOW_EMU_POD"
NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. Please refresh and try again."
)
SCHEMA = build_schema(SDL)


@dataclass
class Pod:
    id: str
    name: str
    image: str
    gpu: dict[str, Any]
    cloud: str
    gpu_count: int
    env: dict[str, str]
    docker_args: str
    disk_gb: int
    volume_gb: int
    cost_per_hr: float
    api_key: str
    root: Path
    created: float
    boot_s: float
    interruptible: bool = False
    desired: str = "RUNNING"
    sshd: subprocess.Popen[bytes] | None = None
    port: int | None = None
    started: float | None = None
    ports: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class RunPodEmulator:
    def __init__(self, api_key: str, work: Path, sshd: str = "/usr/sbin/sshd", boot_s: float = 0.5) -> None:
        self.api_key = api_key
        self.work = work
        self.sshd_bin = sshd
        self.boot_s = boot_s
        self.gpus = {g["id"]: g for g in gpu_types()}
        self.pods: dict[str, Pod] = {}
        self.terminated: set[str] = set()
        self.terminated_by_pod: set[str] = set()  # terminated with their own RUNPOD_API_KEY
        self.no_capacity = 0  # the next N creates find no machine
        self.requests: list[str] = []  # the root field of each operation
        self.token = secrets.token_hex(6)
        self.lock = threading.RLock()
        work.mkdir(parents=True, exist_ok=True)
        self.host_key = work / "ssh_host_ed25519_key"
        if not self.host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True) if os.geteuid() == 0 else None

    # --- pods ------------------------------------------------------------------------------------

    def marker(self, pod: Pod) -> str:
        return f"{MARKER}={self.token}-{pod.id}"

    def _boot(self, pod: Pod) -> None:
        """The container starts: sshd with the pod's PUBLIC_KEY, then its command (dockerArgs)."""
        if pod.sshd is not None or pod.desired != "RUNNING" or time.time() - pod.created < pod.boot_s:
            return
        home = pod.root / "root"
        home.mkdir(parents=True, exist_ok=True)
        key = pod.env.get("PUBLIC_KEY", "").strip()
        marker_name, marker_value = self.marker(pod).split("=", 1)
        pod.sshd, pod.port = start_sshd(
            pod.root,
            self.host_key,
            [key] if key else [],
            {"HOME": str(home), "RUNPOD_POD_ID": pod.id, marker_name: marker_value},
            self.sshd_bin,
        )
        pod.started = time.time()
        if pod.docker_args.strip():
            # The container's /start.sh (RunPod's images: it starts sshd, done above, and stays up) is the
            # pod's own file: the pod's command must never reach this machine's /start.sh.
            start = pod.root / "start.sh"
            start.write_text("#!/bin/sh\nexec sleep infinity\n")
            start.chmod(0o755)
            command = [a.replace("/start.sh", str(start)) for a in shlex.split(pod.docker_args)]
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                **pod.env,
                "RUNPOD_POD_ID": pod.id,
                "RUNPOD_API_KEY": pod.api_key,
                marker_name: marker_value,
            }
            with open(pod.root / "start.log", "ab") as log:
                subprocess.Popen(
                    command, env=env, cwd=home, stdout=log, stderr=log, start_new_session=True
                )

    def _halt(self, pod: Pod) -> None:
        kill_marked(self.marker(pod))
        if pod.sshd is not None:
            pod.sshd.kill()
            pod.sshd.wait()
        pod.sshd, pod.port, pod.started = None, None, None

    def terminate(self, pod_id: str) -> bool:
        with self.lock:
            pod = self.pods.pop(pod_id, None)
            if pod is None:
                return False
            self.terminated.add(pod_id)
        self._halt(pod)
        shutil.rmtree(pod.root, ignore_errors=True)
        return True

    def stop(self, pod: Pod) -> None:
        self._halt(pod)
        pod.desired = "EXITED"

    def view(self, pod: Pod) -> dict[str, Any]:
        """A pod as the API shows it."""
        with self.lock:
            self._boot(pod)
        runtime = None
        if pod.sshd is not None and pod.port is not None and pod.started is not None:
            runtime = {
                "uptimeInSeconds": int(time.time() - pod.started),
                "ports": [{"ip": "127.0.0.1", "isIpPublic": True, "privatePort": 22, "publicPort": pod.port,
                           "type": "tcp"}],
            }  # fmt: skip
        return {
            "id": pod.id,
            "name": pod.name,
            "containerDiskInGb": pod.disk_gb,
            "costPerHr": pod.cost_per_hr,
            "desiredStatus": pod.desired,
            "dockerArgs": pod.docker_args,
            "dockerId": None,
            "env": [f"{k}={v}" for k, v in pod.env.items()],
            "gpuCount": pod.gpu_count,
            "imageName": pod.image,
            "lastStatusChange": f"Rented by User: {time.ctime(pod.created)}",
            "machineId": f"m-{pod.id[:6]}",
            "memoryInGb": 62.0,
            "podType": "INTERRUPTABLE" if pod.interruptible else "RESERVED",
            "port": None,
            "ports": pod.ports,
            "uptimeSeconds": int(time.time() - pod.started) if pod.started else 0,
            "vcpuCount": 8.0,
            "volumeInGb": float(pod.volume_gb),
            "volumeMountPath": "/workspace",
            "runtime": runtime,
            "machine": {"podHostId": f"{pod.id}-64410c1a", "gpuDisplayName": pod.gpu["displayName"]},
        }

    def deploy(self, data: dict[str, Any], bid: float | None) -> dict[str, Any]:
        gpu = self.gpus.get(str(data.get("gpuTypeId")))
        if gpu is None:
            raise ValueError("Something went wrong. Please try again later or contact support.")
        if not data.get("imageName") and not data.get("templateId"):
            raise ValueError("Either imageName or templateId is required")
        cloud = str(data.get("cloudType") or "ALL")
        prefix = {"SECURE": ["secure"], "COMMUNITY": ["community"], "ALL": ["community", "secure"]}[cloud]
        kind = "SpotPrice" if bid is not None else "Price"
        prices = [gpu[p + kind] for p in prefix if gpu[p + kind] is not None]
        count = int(data.get("gpuCount") or 1)
        with self.lock:
            if self.no_capacity > 0 or not prices or count > gpu["maxGpuCount"]:
                self.no_capacity = max(0, self.no_capacity - 1)
                raise ValueError(NO_CAPACITY)
            if bid is not None and bid < min(prices):
                raise ValueError(f"Your bid of ${bid}/GPU is below the current minimum of ${min(prices)}/GPU.")
            pod_id = secrets.token_hex(7)
            root = self.work / f"pod-{pod_id}"
            root.mkdir(parents=True)
            env = {str(e["key"]): str(e.get("value") or "") for e in data.get("env") or []}
            pod = Pod(
                id=pod_id,
                name=str(data.get("name") or ""),
                image=str(data.get("imageName") or ""),
                gpu=gpu,
                cloud=cloud,
                gpu_count=count,
                env=env,
                docker_args=str(data.get("dockerArgs") or ""),
                disk_gb=int(data.get("containerDiskInGb") or 0),
                volume_gb=int(data.get("volumeInGb") or 0),
                cost_per_hr=round((bid if bid is not None else min(prices)) * count, 4),
                api_key="rpa_" + secrets.token_hex(16),
                root=root,
                created=time.time(),
                boot_s=self.boot_s,
                interruptible=bid is not None,
                ports=str(data.get("ports") or ""),
            )
            self.pods[pod_id] = pod
        return self.view(pod)

    def fail(self, pod_id: str, kind: str) -> None:
        if kind == "gone":
            self.terminate(pod_id)
        else:  # a spot pod taken back, or the host went down: the pod stops
            self.stop(self.pods[pod_id])

    def close(self) -> None:
        while self.pods:  # a pod rented while closing ends too
            for pod_id in list(self.pods):
                self.terminate(pod_id)

    # --- GraphQL ---------------------------------------------------------------------------------

    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        path = url.split("?", 1)[0]
        if path.startswith("/_emu/"):
            return admin(self, method, path, body)
        if path == "/graphql" and method == "POST":
            return self.graphql(headers.get("authorization", "").removeprefix("Bearer ").strip(), body)
        return 404, {"errors": [{"message": f"no route {method} {path}"}]}

    def graphql(self, key: str, body: bytes) -> tuple[int, dict[str, Any]]:
        scope: str | None = None
        if key != self.api_key:
            own = next((p for p in self.pods.values() if key and p.api_key == key), None)
            if own is None:
                return 401, {"errors": [{"message": "Unauthorized"}]}
            scope = own.id
        try:
            request = json.loads(body)
        except ValueError:
            return 400, {"errors": [{"message": "Invalid JSON body"}]}
        result = graphql_sync(
            SCHEMA, str(request.get("query") or ""), root_value=_Root(self, scope),
            variable_values=request.get("variables"),
        )  # fmt: skip
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = [{"message": e.message, "path": e.path} for e in result.errors]
        return 200, answer


class _Root:
    """Query and Mutation resolvers (graphql-core calls root attributes with (info, **args))."""

    def __init__(self, emu: RunPodEmulator, scope: str | None) -> None:
        self.emu, self.scope = emu, scope

    def _note(self, name: str) -> None:
        with self.emu.lock:
            self.emu.requests.append(name)

    def _allowed(self, pod_id: str) -> None:
        if self.scope is not None and pod_id != self.scope:
            raise ValueError("This API key is scoped to another pod")

    def _account_only(self) -> None:
        if self.scope is not None:
            raise ValueError("A pod-scoped API key cannot do this")

    def myself(self, _info: Any) -> dict[str, Any]:
        self._note("myself")
        self._account_only()
        return {"id": "user-emu", "pods": [self.emu.view(p) for p in list(self.emu.pods.values())]}

    def pod(self, _info: Any, input: dict[str, Any] | None = None) -> dict[str, Any] | None:
        self._note("pod")
        pod_id = str((input or {}).get("podId"))
        self._allowed(pod_id)
        pod = self.emu.pods.get(pod_id)
        return self.emu.view(pod) if pod else None

    def gpuTypes(self, _info: Any, input: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self._note("gpuTypes")
        wanted = (input or {}).get("id")
        rows = [g for g in self.emu.gpus.values() if wanted is None or g["id"] == wanted]
        return [{**g, "lowestPrice": _lowest(g)} for g in rows]

    def podFindAndDeployOnDemand(self, _info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
        self._note("podFindAndDeployOnDemand")
        self._account_only()
        return self.emu.deploy(input or {}, None)

    def podRentInterruptable(self, _info: Any, input: dict[str, Any]) -> dict[str, Any]:
        self._note("podRentInterruptable")
        self._account_only()
        return self.emu.deploy(input, float(input["bidPerGpu"]))

    def podStop(self, _info: Any, input: dict[str, Any]) -> dict[str, Any]:
        self._note("podStop")
        self._allowed(str(input["podId"]))
        pod = self.emu.pods.get(str(input["podId"]))
        if pod is None:
            raise ValueError("Pod not found")
        self.emu.stop(pod)
        return {"id": pod.id, "desiredStatus": pod.desired}

    def podTerminate(self, _info: Any, input: dict[str, Any]) -> None:
        self._note("podTerminate")
        pod_id = str(input["podId"])
        self._allowed(pod_id)
        if self.scope is not None:
            self.emu.terminated_by_pod.add(pod_id)
        if not self.emu.terminate(pod_id):
            raise ValueError("Pod not found")


def _lowest(gpu: dict[str, Any]) -> Any:
    def resolve(_info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
        spot = [p for p in (gpu["communitySpotPrice"], gpu["secureSpotPrice"]) if p is not None]
        demand = [p for p in (gpu["communityPrice"], gpu["securePrice"]) if p is not None]
        return {"minimumBidPrice": min(spot) if spot else None, "uninterruptablePrice": min(demand) if demand else None}

    return resolve


def admin(emu: RunPodEmulator, method: str, path: str, body: bytes) -> tuple[int, Any]:
    data = json.loads(body) if body.strip() else {}
    parts = [p for p in path.split("/") if p][1:]
    if parts == ["faults"] and method == "POST":
        emu.no_capacity = int(data.get("no_capacity", emu.no_capacity))
        emu.boot_s = float(data.get("boot_s", emu.boot_s))
        return 200, {"ok": True}
    if len(parts) == 3 and parts[0] == "pods" and parts[2] == "fail" and method == "POST":
        emu.fail(parts[1], str(data.get("kind", "exited")))
        return 200, {"ok": True}
    if parts == ["state"]:
        with emu.lock:
            return 200, {
                "pods": {i: {"name": p.name, "desired": p.desired, "cloud": p.cloud, "gpu": p.gpu["displayName"],
                             "interruptible": p.interruptible, "cost_per_hr": p.cost_per_hr, "env": p.env,
                             "docker_args": p.docker_args, "port": p.port} for i, p in emu.pods.items()},
                "terminated": sorted(emu.terminated),
                "terminated_by_pod": sorted(emu.terminated_by_pod),
                "requests": list(emu.requests),
            }  # fmt: skip
    return 404, {"error": f"no route {method} {path}"}


def make_server(emu: RunPodEmulator, port: int = 0) -> ThreadingHTTPServer:
    return serve(emu.handle, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RunPod GraphQL emulator on 127.0.0.1 with real SSH pods")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--api-key", default=os.environ.get("RUNPOD_API_KEY", "emulator-key"))
    parser.add_argument("--work", default=None, help="folder for pod homes (default: a temp folder)")
    parser.add_argument("--sshd", default=shutil.which("sshd") or "/usr/sbin/sshd")
    parser.add_argument("--boot-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="runpod-emu-"))
    emu = RunPodEmulator(args.api_key, work, args.sshd, args.boot_s)
    server = make_server(emu, args.port)
    print(f"RunPod emulator on http://127.0.0.1:{server.server_port}  (RUNPOD_API_BASE_URL)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        emu.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
