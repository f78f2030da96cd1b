"""The emulator's own `/_emu/` routes (not Vast's API): faults to inject and state to inspect."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from loraflow.testing.vast_container import result

if TYPE_CHECKING:
    from loraflow.testing.vast_emulator import Emulator


def admin(emu: Emulator, method: str, path: str, body: bytes) -> tuple[int, Any]:
    data = json.loads(body) if body.strip() else {}
    parts = [p for p in path.split("/") if p]
    if path == "/_emu/state/":
        with emu.lock:
            return 200, {
                "instances": {str(i): emu.row(inst) for i, inst in emu.instances.items()},
                "destroyed": sorted(emu.destroyed),
                "meter": {str(i): vars(emu.meter(i)) for i in [*emu.instances, *emu.metered]},
                "offers": len(emu.offers),
                "requests": len(emu.requests),
                "throttled": emu.throttled,
            }
    if len(parts) == 3 and parts[1] == "results":  # a result_url (logs, execute): no key, as on the real API
        return result(emu, parts[2])
    if path == "/_emu/faults/" and method == "POST":
        with emu.lock:
            emu.snatch = int(data.get("snatch", emu.snatch))
            emu.rate_limit = int(data.get("rate_limit", emu.rate_limit))
            emu.boot_s = float(data.get("boot_s", emu.boot_s))
            emu.pull_s = float(data.get("pull_s", emu.pull_s))
            emu.rate_scale = float(data.get("rate_scale", emu.rate_scale))
            emu.refuse_self_destroy = bool(data.get("refuse_self_destroy", emu.refuse_self_destroy))
        return 200, {"success": True}
    if len(parts) == 4 and parts[1] == "instances" and parts[2].isdigit():
        inst = emu.instances.get(int(parts[2]))
        if inst is None:
            return 404, {"error": "no_such_instance"}
        if parts[3] == "fail":
            emu.fail(inst.id, str(data.get("kind", "gone")))
            return 200, {"success": True}
        if parts[3] == "drop":
            emu._start_sshd(inst)
            assert inst.relay is not None
            inst.relay.drop_after = int(data.get("after_bytes", 0))
            return 200, {"success": True}
    return 404, {"error": "not_found"}
