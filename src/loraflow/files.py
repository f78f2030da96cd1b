"""Files as loraflow moves them: size and SHA-256 read in 1 MB chunks (the one digest that checkpoints,
bundles, uploads and the model registry compare) and folders packed as tar for a host."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Any


def file_meta(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def tar_folder(source: Path, target: Path, arcname: str = ".") -> Path:
    """An uncompressed tar of a folder without Python caches (safetensors and images do not compress)."""
    with tarfile.open(target, "w") as tar:
        tar.add(source, arcname=arcname, filter=lambda t: None if t.name.endswith((".pyc", "__pycache__")) else t)
    return target


def tar_paths(root: Path, paths: list[Path], target: Path) -> Path:
    """An uncompressed tar of some files and folders under `root`, each kept at its path relative to it (what a
    new host needs of an engine's outputs to carry on: unpacked in its own job folder, they sit where the
    engine put them on the lost one)."""
    with tarfile.open(target, "w") as tar:
        for path in paths:
            tar.add(path, arcname=str(path.relative_to(root)))
    return target
