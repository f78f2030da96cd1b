"""The manifest of a prepared dataset, its content hash, and a reproducible tar of it."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = "loraflow-dataset/1"


@dataclass
class ManifestFile:
    name: str
    sha256: str
    size: int
    width: int
    height: int
    caption: str
    caption_source: str  # "file", "captioner:<backend>", "trigger" or "none"
    source: str
    reencoded: bool
    controls: list[str] = field(default_factory=list)  # an edit model's control images, in order (dataset/pairs.py)


def dataset_hash(files: list[ManifestFile]) -> str:
    """Hash of what training sees (pixels' file hashes and captions), independent of timestamps."""
    canon = json.dumps(sorted((f.name, f.sha256, f.caption, *f.controls) for f in files), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def write_manifest(
    out: Path, files: list[ManifestFile], trigger: str | None, caption_ext: str, extra: dict[str, Any] | None = None
) -> str:
    digest = dataset_hash(files)
    doc: dict[str, Any] = {**(extra or {}),
        "format": FORMAT,
        "dataset_hash": digest,
        "trigger_word": trigger,
        "caption_extension": caption_ext,
        "count": len(files),
        "files": [asdict(f) for f in sorted(files, key=lambda f: f.name)],
    }
    (out / MANIFEST_NAME).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return digest


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))


def pack(folder: Path, dest: Path) -> str:
    """Tar the prepared folder (manifest first, sorted, zeroed owners and times): same input, same bytes."""
    manifest = read_manifest(folder)
    names = [MANIFEST_NAME]
    for f in manifest["files"]:
        names.append(f["name"])
        caption = Path(f["name"]).with_suffix("." + manifest["caption_extension"]).name
        if (folder / caption).exists():
            names.append(caption)
    controls = folder / ".control"  # an edit model's control images (dataset/pairs.py)
    names += sorted(p.relative_to(folder).as_posix() for p in controls.rglob("*") if p.is_file())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            data = (folder / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(dest)
    return hashlib.sha256(dest.read_bytes()).hexdigest()
