"""Emulated Vast.ai instances: the record, its row as the API lists it, creation from an offer (snatched offers,
bids below the minimum, env in both forms) and v1 listing by `next_token`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.testing.vast_offers import available, matches
from loraflow.testing.vast_relay import Relay

if TYPE_CHECKING:
    from loraflow.testing.vast_emulator import Emulator


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
    pull_s: float = 0.0
    status: str | None = None  # set by a fault: exited / stopped / offline
    intended: str = "running"
    sshd: subprocess.Popen[bytes] | None = None
    relay: Relay | None = None
    authorized_keys: list[str] = field(default_factory=list)
    gpu_billed_s: float = 0.0  # running time of earlier runs (before a stop): the meter's GPU seconds
    halted: bool = False  # stopped, exited or offline: the GPU bills no more until started again

    def halt(self, now: float) -> None:
        """The container stopped running: its GPU time so far goes on the meter."""
        if not self.halted:
            self.gpu_billed_s += self._running_s(now)
            self.halted = True

    def _running_s(self, now: float) -> float:
        return 0.0 if self.halted else max(0.0, now - (self.created + self.boot_s + self.pull_s))


@dataclass
class Meter:
    """What Vast.ai bills for one instance, per second (../shared/reference/vastai-providers.md §3.4): its GPU
    while it runs, its storage for as long as it exists in any state. What a job records must match it."""

    started: float
    ended: float | None
    gpu_s: float
    usd: float

    @property
    def seconds(self) -> float:
        return (self.ended or time.time()) - self.started


def meter(inst: Instance, born: float, ended: float | None) -> Meter:
    now = ended or time.time()
    gpu_s = inst.gpu_billed_s + inst._running_s(now)
    storage = inst.offer["storage_cost"] * inst.disk / 720
    return Meter(born, ended, gpu_s, (inst.offer["dph_base"] * gpu_s + storage * (now - born)) / 3600)


def instance_row(inst: Instance, status: str | None) -> dict[str, Any]:
    """An instance as Vast lists it: Docker-style `ports` only while running, a trailing newline in the IP."""
    o = inst.offer
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
        "status_msg": f"success, running {inst.image}/ssh" if running else _loading_msg(inst, status),
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
        "gpu_frac": o["gpu_frac"],
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


def _loading_msg(inst: Instance, status: str | None) -> str:
    """How far the image pull is (Vast shows the pull's progress in status_msg while `loading`)."""
    if status != "loading" or inst.pull_s <= 0:
        return "Pulling image\n" if status in (None, "loading") else f"{status}\n"
    done = (time.time() - inst.created - inst.boot_s / 2) / inst.pull_s
    return f"Pulling image: {min(99, max(0, int(done * 100)))}% downloaded\n" if done < 1 else "Starting container\n"


def create_instance(emu: Emulator, ask_id: int, data: dict[str, Any]) -> tuple[int, Any]:
    with emu.lock:
        offer = next((o for o in emu.offers if o["id"] == ask_id), None)
        if offer is not None and emu.snatch > 0:
            emu.snatch -= 1
            emu.offers.remove(offer)  # somebody else rented it a moment ago
            offer = None
        if offer is None or not available(emu, offer):
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
        inst_id = emu.next_id
        emu.next_id += 1
        root = emu.work / f"instance-{inst_id}"
        root.mkdir(parents=True, exist_ok=True)
        inst = Instance(
            id=inst_id,
            offer=offer,
            label=str(data.get("label") or ""),  # the official client sends null for no label or onstart
            image=str(data.get("image", "")),
            disk=float(data.get("disk", 10)),
            env={str(k): str(v) for k, v in env.items()},
            runtype=str(data.get("runtype") or "ssh ssh_direc ssh_proxy"),
            onstart=str(data.get("onstart") or ""),
            api_key=base64.b16encode(os.urandom(16)).decode().lower(),
            created=time.time(),
            boot_s=emu.boot_s,
            pull_s=emu.pull_s,
            root=root,
            authorized_keys=[k["public_key"] for k in emu.ssh_keys],
        )
        emu.born[inst_id] = inst.created
        bid = data.get("price")
        if bid is not None and float(bid) < offer["min_bid"]:
            inst.status, inst.intended = "stopped", "stopped"
            emu.instances[inst_id] = inst
            return 400, {
                "success": False,
                "error": "invalid_price",
                "msg": "bid below the minimum; instance created stopped",
                "new_contract": inst_id,
            }
        emu.instances[inst_id] = inst
        return 200, {"success": True, "new_contract": inst_id, "instance_api_key": inst.api_key}


def list_instances(emu: Emulator, query: dict[str, str]) -> tuple[int, Any]:
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
    with emu.lock:
        rows = [emu.row(i) for i in sorted(emu.instances.values(), key=lambda i: i.id)]
    rows = [r for r in rows if all(matches(r, k, ops) for k, ops in filters.items())]
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
