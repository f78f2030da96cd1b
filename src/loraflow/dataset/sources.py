"""Reading a dataset from a folder, a zip or a tar without extracting anything to disk.

Archives are read member by member as streams, so `dataset check` writes nothing at all, and every
member is vetted first: path traversal, absolute paths, links and device files are refused, and the
member count and uncompressed size are capped before a byte is decompressed. `extract` writes a
source to a folder in chunks and stops the moment the running total passes the limit, so a header
that lies about sizes costs at most the limit on disk and one chunk in memory.
"""

from __future__ import annotations

import io
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from loraflow.errors import UserInputError
from loraflow.media.findings import Finding, Severity

JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini", ".gitkeep"}


@dataclass(frozen=True)
class Entry:
    """One file of the dataset: its path inside the source and a way to read its bytes."""

    path: str  # posix, relative, wrapping folder removed
    size: int
    read: Callable[[], bytes]
    open: Callable[[], IO[bytes]]  # the same bytes as a stream, for reading a header or copying in chunks

    def head(self, limit: int) -> bytes | None:
        """At most `limit` bytes; None when the file is longer (a caption is never read whole blindly)."""
        with self.open() as stream:
            data = stream.read(limit + 1)
        return None if len(data) > limit else data


def _is_junk(parts: tuple[str, ...]) -> bool:
    if any(p == "__MACOSX" for p in parts):
        return True
    name = parts[-1]
    return name.lower() in JUNK_NAMES or name.startswith("._") or any(p.startswith(".") for p in parts)


def _unsafe_reason(name: str) -> str | None:
    if not name or "\x00" in name:
        return "an empty or NUL-containing name"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "a path that climbs out of the dataset ('..')"
    return None


def _strip_wrapper(entries: list[Entry]) -> list[Entry]:
    """A zip made by right-clicking a folder wraps everything in that folder: descend into it."""
    tops = {PurePosixPath(e.path).parts[0] for e in entries}
    if len(tops) == 1 and all(len(PurePosixPath(e.path).parts) > 1 for e in entries):
        top = tops.pop()
        return [Entry(e.path[len(top) + 1 :], e.size, e.read, e.open) for e in entries]
    return entries


class ArchiveLimits:
    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files


def _check_totals(count: int, total: int, limits: ArchiveLimits, source: str) -> list[Finding]:
    out: list[Finding] = []
    if count > limits.max_files:
        out.append(
            Finding(
                "archive_too_many_files",
                Severity.ERROR,
                f"the archive holds {count} files, more than the limit of {limits.max_files}",
                "split the dataset or raise dataset.checks.max_archive_files",
                source,
            )
        )
    if total > limits.max_bytes:
        out.append(
            Finding(
                "archive_too_large",
                Severity.ERROR,
                f"the archive expands to {total} bytes, more than the limit of {limits.max_bytes}",
                "use a smaller dataset or raise dataset.checks.max_archive_bytes",
                source,
            )
        )
    return out


def _bounded_reader(read: Callable[[], bytes], declared: int, name: str) -> Callable[[], bytes]:
    def reader() -> bytes:
        data = read()
        if len(data) > declared:  # headers that lie about sizes are a zip-bomb trick
            raise UserInputError(f"{name} expands beyond its declared size", fix="rebuild the archive")
        return data

    return reader


def _zip_entries(path: Path, limits: ArchiveLimits) -> tuple[list[Entry], list[Finding]]:
    findings: list[Finding] = []
    entries: list[Entry] = []
    zf = zipfile.ZipFile(path)
    infos = [i for i in zf.infolist() if not i.is_dir()]
    findings += _check_totals(len(infos), sum(i.file_size for i in infos), limits, path.name)
    if findings:
        return [], findings
    for info in infos:
        reason = _unsafe_reason(info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip was made without unix modes
        if reason is None and kind and kind != stat.S_IFREG:
            reason = "a link" if kind == stat.S_IFLNK else "a special file"
        if reason:
            findings.append(
                Finding(
                    "unsafe_archive_member",
                    Severity.ERROR,
                    f"refused archive member with {reason}",
                    "rebuild the archive from a plain folder of images",
                    info.filename,
                )
            )
            continue
        name = info.filename.replace("\\", "/")
        if _is_junk(PurePosixPath(name).parts):
            continue
        reader = _bounded_reader(lambda i=info: zf.read(i), info.file_size, name)
        entries.append(Entry(name, info.file_size, reader, lambda i=info: zf.open(i)))
    return entries, findings


def _tar_entries(path: Path, limits: ArchiveLimits) -> tuple[list[Entry], list[Finding]]:
    findings: list[Finding] = []
    entries: list[Entry] = []
    tf = tarfile.open(path)  # noqa: SIM115 - stays open while the entries are read
    members = [m for m in tf.getmembers() if not m.isdir()]
    files = [m for m in members if m.isfile()]
    findings += _check_totals(len(members), sum(m.size for m in files), limits, path.name)
    if findings:
        return [], findings
    for member in members:
        reason = _unsafe_reason(member.name)
        if reason is None and (member.issym() or member.islnk()):
            reason = "a link"
        elif reason is None and not member.isfile():
            reason = "a device file, pipe or other special file"
        if reason:
            findings.append(
                Finding(
                    "unsafe_archive_member",
                    Severity.ERROR,
                    f"refused archive member with {reason}",
                    "rebuild the archive from a plain folder of images",
                    member.name,
                )
            )
            continue
        name = member.name.removeprefix("./")
        if _is_junk(PurePosixPath(name).parts):
            continue

        def stream(m: tarfile.TarInfo = member) -> IO[bytes]:
            handle = tf.extractfile(m)
            assert handle is not None
            return handle

        def read(m: tarfile.TarInfo = member) -> bytes:
            return stream(m).read(m.size + 1)

        entries.append(Entry(name, member.size, _bounded_reader(read, member.size, name), stream))
    return entries, findings


def _folder_entries(root: Path) -> tuple[list[Entry], list[Finding]]:
    entries: list[Entry] = []
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root)
        if not file.is_file() or _is_junk(rel.parts):
            continue
        entries.append(Entry(rel.as_posix(), file.stat().st_size, file.read_bytes, lambda f=file: f.open("rb")))
    return entries, []


def open_source(src: str | Path, limits: ArchiveLimits) -> tuple[list[Entry], list[Finding]]:
    """List a dataset source's files (junk skipped, wrapper folder removed) and archive findings."""
    path = Path(src).expanduser()
    if not path.exists():
        raise UserInputError(f"no such file or folder: {path}", fix="give the path of a folder, .zip or .tar")
    if path.is_dir():
        entries, findings = _folder_entries(path)
    elif zipfile.is_zipfile(path):
        try:
            entries, findings = _zip_entries(path, limits)
        except zipfile.BadZipFile as exc:
            raise UserInputError(f"{path.name} is a damaged zip ({exc})", fix="re-create the zip") from None
    elif tarfile.is_tarfile(path):
        try:
            entries, findings = _tar_entries(path, limits)
        except tarfile.TarError as exc:
            raise UserInputError(f"{path.name} is a damaged tar ({exc})", fix="re-create the tar") from None
    else:
        raise UserInputError(
            f"{path.name} is neither a folder, a zip nor a tar", fix="give a folder of images or an archive of one"
        )
    entries = sorted(_strip_wrapper(entries), key=lambda e: e.path)
    return entries, findings


class ArchiveTooLarge(UserInputError):
    """The expansion passed its limit; everything written so far is already removed."""


CHUNK = 1 << 20


def _copy_bounded(stream: IO[bytes], out: io.BufferedWriter, written: int, limit: int) -> int:
    while chunk := stream.read(CHUNK):
        written += len(chunk)
        if written > limit:
            raise ArchiveTooLarge(
                f"the archive expands to more than the limit of {limit} bytes",
                fix="use a smaller dataset (the limit is the upload size or dataset.checks.max_archive_bytes)",
            )
        out.write(chunk)
    return written


def extract(entries: list[Entry], dest: Path, limit: int, name_of: Callable[[Entry], str | None]) -> int:
    """Copy entries into `dest` (which must not exist yet) member by member, in chunks; `name_of` gives each
    file's name there (None skips it). Past `limit` bytes in all, `dest` is removed and ArchiveTooLarge raised."""
    dest.mkdir(parents=True)
    written = 0
    try:
        for entry in entries:
            name = name_of(entry)
            if name is None:
                continue
            (dest / name).parent.mkdir(parents=True, exist_ok=True)  # a name may keep one folder (control/)
            with entry.open() as stream, open(dest / name, "wb") as out:
                written = _copy_bounded(stream, out, written, limit)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return written
