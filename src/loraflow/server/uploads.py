"""Dataset uploads kept for editing before a job is made from them (the web wizard and /api/uploads).

An upload lives in `LORAFLOW_HOME/uploads/web-<user>-<id>/dataset/`: the user's name is part of the
path, so nobody reaches another user's upload by guessing its id. An archive is expanded member by
member in chunks, bounded by the upload limit (and the default dataset.checks.max_archive_bytes), and
every stored name is sanitized. Abandoned uploads are removed by the periodic sweep (platform/gc.py `plan_uploads`).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath

from fastapi import UploadFile

from loraflow import paths
from loraflow.errors import UserInputError
from loraflow.server.limits import Quotas
from loraflow.server.problems import Problem

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
# An edit model's control images (the image before the edit), in the upload's `control/` folder: the layout
# the spec's `dataset.control: control` names (dataset/pairs.py), from the wizard's second file field or an
# archive's `control/` folder.
CONTROL = "control"


async def save_files(uploads: list[UploadFile], folder: Path, limit: int, controls: list[UploadFile] = ()) -> Path:
    """Stream the upload to disk, counting bytes; a single archive stays a file, loose files a folder (the
    control images in its `control/` folder)."""
    folder.mkdir(parents=True)
    single_archive = len(uploads) == 1 and (uploads[0].filename or "").lower().endswith((".zip", ".tar", ".tar.gz"))
    if single_archive and controls:
        raise Problem(422, "controls beside an archive", "put the control images in the archive's control/ folder")
    dest_dir = folder if single_archive else folder / "dataset"
    dest_dir.mkdir(exist_ok=True)
    names, total = await _receive(uploads, dest_dir, limit, 0)
    if controls:
        (dest_dir / CONTROL).mkdir()
        more, total = await _receive(controls, dest_dir / CONTROL, limit, total)
        names += [f"{CONTROL}/{n}" for n in more]
    if not names:
        raise Problem(422, "no files", "the upload holds no images (only hidden files)")
    return dest_dir / names[0] if single_archive else dest_dir


async def _receive(uploads: list[UploadFile], dest_dir: Path, limit: int, total: int) -> tuple[list[str], int]:
    """Write each file under its stored name, counting bytes against the upload's limit."""
    taken: set[str] = set()
    names = []
    for upload in uploads:
        # Renamed as archive members are (`IMG_1 (copy).jpg` -> `IMG_1_copy_.jpg`, its caption alike), never
        # refused: one odd name used to reject the whole batch.
        name = stored_name(Path(upload.filename or "").name, taken)
        if not name:
            continue  # a hidden file (.DS_Store): not part of a dataset
        names.append(name)
        with open(dest_dir / name, "wb") as out:
            while chunk := await upload.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise Problem(413, "upload too large", f"the upload is over {limit // (1 << 20)} MB")
                out.write(chunk)
    return names, total


def stored_name(path: str, taken: set[str]) -> str | None:
    """The file name an archive member gets: its folders joined with '__' (an image and its caption stay a
    pair), every character outside letters, digits, '.', '-', '_' replaced; None for hidden files."""
    parts = PurePosixPath(path).parts
    if not parts or parts[-1].startswith("."):
        return None
    name = re.sub(r"[^\w.\-]+", "_", "__".join(parts)).lstrip("._-")[-200:] or "file"
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 2
    while candidate.lower() in taken:
        candidate, n = f"{stem}-{n}{suffix}", n + 1
    taken.add(candidate.lower())
    return candidate


def archive_name(path: str, taken: set[str]) -> str | None:
    """An archive member's stored name; one in its `control/` folder keeps it (an edit model's pairs)."""
    parts = PurePosixPath(path).parts
    if len(parts) == 2 and parts[0] == CONTROL:
        name = stored_name(parts[1], taken)
        return f"{CONTROL}/{name}" if name else None
    return stored_name(path, taken)


def _unpack(saved: Path, dest: Path, limit: int) -> None:
    """A zip or tar goes through the dataset reader's safety checks, then is written in chunks up to
    `limit` bytes in all; loose files are moved as they are (their size was counted while receiving)."""
    if saved.is_file():
        from loraflow.dataset.sources import ArchiveLimits, ArchiveTooLarge, extract, open_source
        from loraflow.spec import DatasetChecks

        bound = min(limit, DatasetChecks().max_archive_bytes)
        try:
            entries, findings = open_source(str(saved), ArchiveLimits(bound, DatasetChecks().max_archive_files))
            refusals = [f for f in findings if f.severity == "error"]
            if any(f.code == "archive_too_large" for f in refusals):
                raise ArchiveTooLarge(refusals[0].message, fix=refusals[0].fix)
            if refusals:
                raise Problem(422, "archive refused", "; ".join(f.line() for f in refusals))
            taken: set[str] = set()
            extract(entries, dest, bound, lambda e: archive_name(e.path, taken))
        except ArchiveTooLarge as exc:
            raise Problem(413, "upload too large", f"{exc.message} ({bound // (1 << 20)} MB)") from None
        except UserInputError as exc:
            raise Problem(422, "archive refused", exc.message) from None
        return
    dest.mkdir(parents=True, exist_ok=True)
    for path in saved.iterdir():
        shutil.move(str(path), dest / path.name)  # (the control folder whole)


async def create(
    user: str, files: list[UploadFile], limit: int, quotas: Quotas, controls: list[UploadFile] = ()
) -> tuple[str, Path]:
    """A new upload's id and dataset folder; on any refusal nothing is left behind. The unpacking runs in
    a worker thread under one of the user's work slots, never on the event loop."""
    upload_id = uuid.uuid4().hex
    root = paths.home() / "uploads" / f"web-{user}-{upload_id}"
    try:
        saved = await save_files(files, root / "incoming", limit, controls)
        await quotas.off_loop(user, _unpack, saved, root / "dataset", limit)
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


def remove(dataset: Path, name: str) -> None:
    """Take one image, its caption and its control images out of an upload (the grid's Remove)."""
    path = image(dataset, name)
    path.with_suffix(".txt").unlink(missing_ok=True)
    for control in controls(dataset).get(name, []):
        (dataset / CONTROL / control).unlink()
    path.unlink()


def controls(dataset: Path) -> dict[str, list[str]]:
    """Each target image's control images, by the names dataset/pairs.py matches (`a.png` for `a.jpg`, or
    `a_0.png`, `a_1.png`...), in its order; {} for an upload without a control folder."""
    folder = dataset / CONTROL
    if not folder.is_dir():
        return {}
    from loraflow.dataset.pairs import control_order, owner_stem

    stems = {p.stem: p.name for p in dataset.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    out: dict[str, list[str]] = {name: [] for name in stems.values()}
    for path in sorted(folder.iterdir()):
        owner = owner_stem(path.stem, set(stems)) if path.suffix.lower() in IMAGE_SUFFIXES else None
        if owner is not None:
            out[stems[owner]].append(path.name)
    return {name: sorted(found, key=lambda c, n=name: control_order(Path(n).stem, c)) for name, found in out.items()}


def control_image(dataset: Path, name: str) -> Path:
    path = dataset / CONTROL / name
    if "/" in name or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
        raise Problem(422, "unknown image", f"{name!r} is not a control image of this upload")
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
