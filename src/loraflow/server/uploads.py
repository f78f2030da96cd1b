"""Dataset uploads kept for editing before a job is made from them (the web wizard and /api/uploads).

An upload lives in `LORAFLOW_HOME/uploads/web-<user>-<id>/dataset/`: the user's name is part of the
path, so nobody reaches another user's upload by guessing its id.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from fastapi import UploadFile

from loraflow import paths
from loraflow.server.problems import Problem

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
SAFE_NAME = re.compile(r"^[\w.\- ]{1,200}$")
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


async def save_files(uploads: list[UploadFile], folder: Path, limit: int) -> Path:
    """Stream the upload to disk, counting bytes; a single archive stays a file, loose files a folder."""
    folder.mkdir(parents=True)
    total = 0
    single_archive = len(uploads) == 1 and (uploads[0].filename or "").lower().endswith((".zip", ".tar", ".tar.gz"))
    dest_dir = folder if single_archive else folder / "dataset"
    dest_dir.mkdir(exist_ok=True)
    for upload in uploads:
        name = Path(upload.filename or "").name
        if not name or not SAFE_NAME.match(name) or name.startswith("."):
            raise Problem(422, "bad file name", f"{upload.filename!r} is not an acceptable file name")
        with open(dest_dir / name, "wb") as out:
            while chunk := await upload.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise Problem(413, "upload too large", f"the upload is over {limit // (1 << 20)} MB")
                out.write(chunk)
    return dest_dir / Path(uploads[0].filename or "").name if single_archive else dest_dir


def _unpack(saved: Path, dest: Path) -> None:
    """A zip or tar goes through the dataset reader's safety checks; loose files are moved as they are."""
    dest.mkdir(parents=True, exist_ok=True)
    if saved.is_file():
        from loraflow.dataset.sources import ArchiveLimits, open_source

        entries, _findings = open_source(str(saved), ArchiveLimits(4 << 30, 20000))
        for entry in entries:
            name = Path(entry.path).name
            if name and not name.startswith("."):
                (dest / name).write_bytes(entry.read())
        return
    for path in saved.iterdir():
        shutil.move(str(path), dest / path.name)


async def create(user: str, files: list[UploadFile], limit: int) -> tuple[str, Path]:
    """A new upload's id and dataset folder; on any refusal nothing is left behind."""
    upload_id = uuid.uuid4().hex
    root = paths.home() / "uploads" / f"web-{user}-{upload_id}"
    try:
        _unpack(await save_files(files, root / "incoming", limit), root / "dataset")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(root / "incoming", ignore_errors=True)
    return upload_id, root / "dataset"


def folder(user: str, upload_id: str) -> Path:
    if not UPLOAD_ID.match(upload_id):
        raise Problem(404, "not found", "no such upload")
    path = paths.home() / "uploads" / f"web-{user}-{upload_id}" / "dataset"
    if not path.is_dir():
        raise Problem(404, "not found", "no such upload")
    return path


def image(dataset: Path, name: str) -> Path:
    path = dataset / name
    if "/" in name or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
        raise Problem(422, "unknown image", f"{name!r} is not an image of this upload")
    return path


def captions(dataset: Path) -> dict[str, str]:
    """Image name -> its caption ('' when it has none yet)."""
    out = {}
    for path in sorted(dataset.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            text = path.with_suffix(".txt")
            out[path.name] = text.read_text(encoding="utf-8").strip() if text.exists() else ""
    return out


def write_caption(dataset: Path, name: str, text: str) -> None:
    image(dataset, name).with_suffix(".txt").write_text(text.strip() + "\n", encoding="utf-8")
