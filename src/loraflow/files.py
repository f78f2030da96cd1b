"""Size and SHA-256 of a file, read in 1 MB chunks: the one digest that checkpoints, bundles, uploads and
the model registry compare, so a file copied anywhere in loraflow can be checked against any record."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def file_meta(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}
