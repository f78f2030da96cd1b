"""The emulated Vast.ai API's calls on one instance beyond show/destroy: stop and start (`PUT /instances/ID/`
with `state`), label, the container's logs (`PUT /instances/request_logs/ID/`) and the constrained remote
command (`PUT /instances/command/ID/`: ls, rm and du only), answered as the real API does: a `result_url`
the client then fetches without a key. Each is allowed to the account key and to that instance's own key
(CONTAINER_API_KEY inside it), and nothing else is allowed to an instance key. The show endpoint's rate
limit (one call per key per threshold, 429 with Retry-After past it) lives here too."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loraflow.testing.vast_emulator import Emulator
    from loraflow.testing.vast_instances import Instance

NO_SUCH = {"success": False, "error": "no_such_instance", "msg": "Instance with that ID does not exist."}
EXECUTABLE = ("ls", "rm", "du")  # what `vastai execute` may run (its help: "constrained remote command")
SHOW_THRESHOLD_S = 2.0  # GET /instances/ID/: about one call per 2 s per key


def instance_key_allows(method: str, parts: list[str], own_id: int) -> bool:
    """The calls an instance's own key may make: on its own instance, what the account key could."""
    on_self = parts[:3] == ["api", "v0", "instances"] and len(parts) == 4 and parts[3] == str(own_id)
    verb = parts[3] if len(parts) == 5 and parts[:3] == ["api", "v0", "instances"] else None
    return (on_self and method in ("GET", "PUT", "DELETE")) or (
        verb in ("request_logs", "command") and parts[4] == str(own_id) and method == "PUT"
    )


def throttled(emu: Emulator, key: str, route: str) -> tuple[int, Any, dict[str, str]] | None:
    """A 429 with Retry-After when this key called `route` less than its threshold ago (scaled by
    emu.rate_scale; 0 turns it off)."""
    threshold = SHOW_THRESHOLD_S * emu.rate_scale
    if threshold <= 0:
        return None
    now = time.monotonic()
    with emu.lock:
        last = emu.last_call.get((key, route))
        if last is not None and now - last < threshold:
            emu.throttled += 1
            wait = threshold - (now - last)
            body = {"success": False, "error": "rate_limit_exceeded",
                    "msg": f"API requests too frequent endpoint threshold={SHOW_THRESHOLD_S}"}  # fmt: skip
            return 429, body, {"Retry-After": f"{wait:.3g}" if wait < 10 else str(int(wait + 0.999))}
        emu.last_call[(key, route)] = now
    return None


def put_instance(emu: Emulator, inst: Instance | None, data: dict[str, Any]) -> tuple[int, Any]:
    """Label, stop (the container stops: its processes end, the disk stays and bills) or start it again."""
    if inst is None:
        return 404, NO_SUCH
    if "label" in data:
        inst.label = str(data["label"] or "")
    state = data.get("state")
    if state == "stopped":
        emu.stop(inst)
    elif state == "running" and inst.intended == "stopped":
        inst.intended, inst.status, inst.created, inst.halted = "running", None, time.time(), False
    elif state is not None and state not in ("running", "stopped"):
        return 400, {"success": False, "error": "invalid_args", "msg": f"invalid state {state}"}
    return 200, {"success": True}


def request_logs(emu: Emulator, inst: Instance | None, data: dict[str, Any], host: str) -> tuple[int, Any]:
    """The container's output (what its onstart printed), the last `tail` lines, behind a result_url."""
    if inst is None:
        return 404, NO_SUCH
    emu.actual_status(inst)  # (the emulator boots an instance when it is looked at)
    log = inst.root / "onstart.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    tail = int(data.get("tail") or 0)
    text = "\n".join(lines[-tail:] if tail > 0 else lines) + ("\n" if lines else "")
    return 200, {"success": True, "result_url": _result(emu, text, host), "msg": "logs requested"}


def execute(emu: Emulator, inst: Instance | None, data: dict[str, Any], host: str) -> tuple[int, Any]:
    """ls, rm or du inside the instance (its paths: / is the instance's own root), output at a result_url."""
    if inst is None:
        return 404, NO_SUCH
    try:
        argv = shlex.split(str(data.get("command") or ""))
    except ValueError:
        argv = []
    if not argv or argv[0] not in EXECUTABLE:
        return 400, {"success": False, "error": "invalid_args",
                     "msg": f"command must be one of {', '.join(EXECUTABLE)}"}  # fmt: skip
    root = inst.root.resolve()
    args = [argv[0]]
    for arg in argv[1:]:
        if arg.startswith("-"):
            args.append(arg)
            continue
        path = (root / arg.lstrip("/")) if arg.startswith("/") else (root / "root" / arg)
        if not path.resolve().is_relative_to(root):  # never outside the instance
            return 400, {"success": False, "error": "invalid_args", "msg": f"{arg}: outside the instance"}
        args.append(str(path))
    done = subprocess.run(args, cwd=root / "root" if (root / "root").is_dir() else root, capture_output=True,
                          text=True, timeout=30, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})  # fmt: skip
    text = (done.stdout + done.stderr).replace(str(root), "")
    return 200, {"success": True, "writeable_path": "", "result_url": _result(emu, text, host)}


def _result(emu: Emulator, text: str, host: str) -> str:
    token = uuid.uuid4().hex
    with emu.lock:
        emu.results[token] = text
    return f"http://{host}/_emu/results/{token}/"


def result(emu: Emulator, token: str) -> tuple[int, Any]:
    """What a result_url serves (the real one is a storage link: no key)."""
    with emu.lock:
        text = emu.results.get(token)
    return (404, {"error": "not_ready"}) if text is None else (200, text)
