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
