"""Resuming ai-toolkit from the save it will pick: the step written in that save made the steps it holds."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from loraflow.engines.external import safetensors_header


def set_training_step(path: Path, step: int) -> bool:
    """Make a save's `training_info.step` (where ai-toolkit resumes) the number of steps it holds.

    ai-toolkit writes the loop index there, so on resume it trains that index again: one step done twice.
    The file is rewritten with only its header changed; returns whether it needed it.
    """
    header = safetensors_header(path)
    if header is None:
        return False
    meta = dict(header.get("__metadata__") or {})
    info = json.loads(meta.get("training_info", "{}"))
    if info.get("step") == step:
        return False
    meta["training_info"] = json.dumps({**info, "step": step})
    header["__metadata__"] = meta
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads its header to 8 bytes
    with path.open("rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        f.seek(8 + size)
        tmp = path.with_name(path.name + ".partial")
        with tmp.open("wb") as out:
            out.write(struct.pack("<Q", len(raw)) + raw)
            shutil.copyfileobj(f, out)
    tmp.replace(path)
    return True
