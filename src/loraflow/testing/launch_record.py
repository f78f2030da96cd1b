"""What a stand-in engine learns about how it was started: the process group `accelerate launch` (torchrun
underneath) made for it. Each rank writes `launch-rank<R>.json` in the engine's output folder; only rank 0 goes
on to train, as sd-scripts and musubi print, save and sample on the main process only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def record_launch(out: Path) -> bool:
    """Write this process's launch facts; True on the main process (the one that trains and prints)."""
    rank = int(os.environ.get("RANK", "0"))
    facts = {
        "rank": rank,
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "torchrun": "TORCHELASTIC_RUN_ID" in os.environ,
        "master_port": os.environ.get("MASTER_PORT"),
        "argv": sys.argv,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"launch-rank{rank}.json").write_text(json.dumps(facts))
    return rank == 0


def launches(out: Path) -> list[dict[str, object]]:
    """Every rank's record, by rank."""
    return sorted((json.loads(p.read_text()) for p in out.glob("launch-rank*.json")), key=lambda f: f["rank"])


def rank_pids(launcher: int) -> dict[int, int]:
    """A launcher's trainer processes by their RANK (torchrun starts them as its children): what a test kills
    or stops to play a dead or hung GPU."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found
