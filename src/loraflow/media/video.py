"""Video clips' frame count, size and frame rate from their container headers, with no decoder installed.

loraflow checks a video dataset before anything is rented, and the decoders (PyAV, OpenCV, imageio-ffmpeg)
are large native packages a CPU orchestrator does not otherwise need. The containers say what is needed:
MP4/MOV (ISO base media: `tkhd` size, `mdhd` timescale and duration, `stsz` sample count of the video track)
and WebM/MKV (Matroska: PixelWidth/PixelHeight, the track's DefaultDuration per frame and the segment's
Duration). Only the header boxes are read; the media data is skipped by seeking. A clip whose header does not
say (a WebM without DefaultDuration, AVI) is reported as unreadable with the fix, never guessed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import IO, Any

from loraflow.media.findings import Finding, Severity

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".webm", ".mkv"}
WAN_FPS = 16.0  # the rate musubi trains Wan at when source_fps is set (docs/dataset_config.md)
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}
_MAX_BOX = 64 << 20  # a header box larger than this is not a header
_MAX_DEPTH = 12  # real files nest moov/trak/mdia/minf/stbl: a deeper file is not a video


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    frames: int
    fps: float

    @property
    def seconds(self) -> float:
        return self.frames / self.fps if self.fps else 0.0


@dataclass(frozen=True)
class VideoNeeds:
    """What the engine will take from each clip (from the musubi spec's video settings)."""

    min_frames: int  # the shortest target: a clip with fewer frames gives no sample at all
    max_frames: int  # the longest target: a clip with fewer frames skips that length
    source_fps: float | None = None  # clips are resampled from this rate to Wan's 16 fps
    targets: tuple[int, ...] = ()  # every length cut from a clip (empty: the whole clip)
    first_frame: bool = False  # image-to-video: each clip's first frame is the control it is trained from

    def first_frame_finding(self, usable: int, where: str) -> Finding | None:
        """Image-to-video learns the motion that follows a first frame: a dataset without a usable clip has none."""
        if not self.first_frame or usable:
            return None
        return Finding("no_clips_for_i2v", Severity.ERROR, "an image-to-video model needs video clips: each clip's "
                       "first frame is the control and the frames after it the motion to learn; none is usable",
                       "add clips (see the findings above for those refused), or use a text-to-video model",
                       where)

    def fitting(self, frames: int) -> list[int]:
        return [t for t in self.targets if t <= frames]

    def usable_frames(self, info: VideoInfo) -> int:
        if self.source_fps:
            return int(info.frames * WAN_FPS / self.source_fps)
        return info.frames


class VideoError(ValueError):
    """The header could not be read; the message says what was missing."""


def probe(stream: IO[bytes], name: str) -> VideoInfo:
    suffix = name.lower().rsplit(".", 1)[-1]
    if suffix in ("webm", "mkv"):
        return _matroska(stream)
    return _mp4(stream)


# --- MP4 / MOV -------------------------------------------------------------------------------------


def _boxes(stream: IO[bytes], end: int | None) -> Any:
    """(type, payload start, payload size) of each box until `end`, seeking over the payloads."""
    while end is None or stream.tell() + 8 <= end:
        start = stream.tell()
        head = stream.read(8)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head)
        header = 8
        if size == 1:
            size = struct.unpack(">Q", stream.read(8))[0]
            header = 16
        elif size == 0:  # to the end of the file
            stream.seek(0, 2)
            size = stream.tell() - start
            stream.seek(start + header)
        if size < header:
            raise VideoError("a box of the file is malformed")
        yield kind, start + header, size - header
        stream.seek(start + size)


def _read(stream: IO[bytes], at: int, size: int) -> bytes:
    if size > _MAX_BOX:
        raise VideoError("a header box is implausibly large")
    stream.seek(at)
    return stream.read(size)


def _mp4(stream: IO[bytes]) -> VideoInfo:
    stream.seek(0)
    for kind, at, size in _boxes(stream, None):
        if kind == b"moov":
            for track in _tracks(stream, at, at + size):
                if track.get("video"):
                    return _mp4_info(track)
            raise VideoError("the file has no video track")
    raise VideoError("no `moov` header box (the file may be cut short)")


def _tracks(stream: IO[bytes], start: int, end: int) -> list[dict[str, Any]]:
    stream.seek(start)
    out = []
    for kind, at, size in list(_boxes(stream, end)):
        if kind == b"trak":
            track: dict[str, Any] = {}
            _walk(stream, at, at + size, track)
            out.append(track)
    return out


def _walk(stream: IO[bytes], start: int, end: int, track: dict[str, Any], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise VideoError("its header boxes are nested implausibly deep")
    stream.seek(start)
    for kind, at, size in list(_boxes(stream, end)):
        if kind in _CONTAINERS:
            _walk(stream, at, at + size, track, depth + 1)
        elif kind == b"tkhd":
            data = _read(stream, at, size)
            track["width"], track["height"] = (v >> 16 for v in struct.unpack(">II", data[-8:]))
        elif kind == b"mdhd":
            data = _read(stream, at, size)
            if data[0] == 1:
                track["timescale"], track["duration"] = struct.unpack(">IQ", data[20:32])
            else:
                track["timescale"], track["duration"] = struct.unpack(">II", data[12:20])
        elif kind == b"hdlr":
            # the media handler (mdia) says `vide`; QuickTime's data handler in minf must not undo it
            track["video"] = track.get("video") or _read(stream, at, size)[8:12] == b"vide"
        elif kind == b"stsz":
            track["frames"] = struct.unpack(">I", _read(stream, at, 12)[8:12])[0]


def _mp4_info(track: dict[str, Any]) -> VideoInfo:
    missing = [k for k in ("width", "height", "timescale", "duration", "frames") if k not in track]
    if missing or not track["timescale"] or not track["duration"]:
        raise VideoError(f"the video track's header lacks {', '.join(missing) or 'a duration'}")
    seconds = track["duration"] / track["timescale"]
    return VideoInfo(track["width"], track["height"], track["frames"], round(track["frames"] / seconds, 3))


# --- WebM / Matroska ------------------------------------------------------------------------------

_SEGMENT, _INFO, _TRACKS, _TRACK, _VIDEO = 0x18538067, 0x1549A966, 0x1654AE6B, 0xAE, 0xE0
_CLUSTER = 0x1F43B675


def _vint(stream: IO[bytes], keep_marker: bool) -> tuple[int, int]:
    first = stream.read(1)
    if not first:
        raise EOFError
    b = first[0]
    length = 1
    while length <= 8 and not b & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        raise VideoError("a Matroska element id is malformed")
    value = b if keep_marker else b & (0xFF >> length)
    for byte in stream.read(length - 1):
        value = (value << 8) | byte
    return value, length


def _elements(stream: IO[bytes], end: int | None) -> Any:
    while end is None or stream.tell() < end:
        try:
            eid, _ = _vint(stream, True)
            size, n = _vint(stream, False)
        except EOFError:
            return
        at = stream.tell()
        unknown = size == (1 << (7 * n)) - 1  # a live stream's "unknown size": its children follow
        yield eid, at, None if unknown else size
        if not unknown:
            stream.seek(at + size)


def _uint(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _float(data: bytes) -> float:
    return struct.unpack(">f" if len(data) == 4 else ">d", data)[0]


def _matroska(stream: IO[bytes]) -> VideoInfo:
    stream.seek(0)
    found: dict[str, float] = {"scale": 1_000_000}
    for eid, at, size in _elements(stream, None):
        if eid == _SEGMENT:
            _segment(stream, at, None if size is None else at + size, found)
            break
    if not {"width", "height", "duration"} <= set(found):
        raise VideoError("the header does not give the picture size and duration")
    seconds = found["duration"] * found["scale"] / 1e9
    if "frames" in found:  # counted from the blocks (ffmpeg's WebM has no DefaultDuration)
        frames = int(found["frames"])
        fps = frames / seconds if seconds else 0.0
    elif "frame_ns" in found:
        fps = 1e9 / found["frame_ns"]
        frames = round(seconds * fps)
    else:
        raise VideoError("the header does not give the frame rate")
    return VideoInfo(int(found["width"]), int(found["height"]), frames, round(fps, 3))


def _count_blocks(stream: IO[bytes], start: int, end: int | None, track: int, depth: int = 0) -> int:
    """The video track's frames: one SimpleBlock (or Block in a BlockGroup) each; only their first bytes
    (the track number) are read."""
    if depth > _MAX_DEPTH:
        raise VideoError("its clusters are nested implausibly deep")
    count = 0
    stream.seek(start)
    for eid, at, size in _elements(stream, end):
        if size is None and eid != _CLUSTER:
            return count
        if eid == _CLUSTER:  # the next cluster after an unknown-size one
            count += _count_blocks(stream, at, None if size is None else at + size, track, depth + 1)
            if size is None:
                return count
        elif eid in (0xA3, 0xA1):  # SimpleBlock, Block: the track number comes first
            number, _ = _vint(stream, False)
            count += number == track
        elif eid == 0xA0:  # BlockGroup
            count += _count_blocks(stream, at, at + (size or 0), track, depth + 1)
        stream.seek(at + (size or 0))
    return count


def _segment(stream: IO[bytes], start: int, end: int | None, found: dict[str, float]) -> None:
    stream.seek(start)
    for eid, at, size in _elements(stream, end):
        if eid == _CLUSTER and "frame_ns" not in found and "track" in found:
            cluster_end = None if size is None else at + size
            found["frames"] = found.get("frames", 0) + _count_blocks(stream, at, cluster_end, int(found["track"]))
            if size is None:
                return  # an unknown-size cluster was read to the end
            continue
        if eid == _CLUSTER or size is None:
            return  # media data: the headers come before it
        if eid == _INFO:
            for sub, sat, ssize in list(_elements(stream, at + size)):
                data = _read(stream, sat, ssize or 0)
                if sub == 0x2AD7B1:
                    found["scale"] = _uint(data)
                elif sub == 0x4489:
                    found["duration"] = _float(data)
            stream.seek(at + size)
        elif eid == _TRACKS:
            for sub, sat, ssize in list(_elements(stream, at + size)):
                if sub == _TRACK and ssize is not None:
                    _track(stream, sat, sat + ssize, found)
            stream.seek(at + size)


def _track(stream: IO[bytes], start: int, end: int, found: dict[str, float]) -> None:
    stream.seek(start)
    fields: dict[int, bytes] = {}
    video: dict[int, bytes] = {}
    for eid, at, size in list(_elements(stream, end)):
        if eid == _VIDEO and size is not None:
            stream.seek(at)
            video = {v: _read(stream, vat, vsize or 0) for v, vat, vsize in list(_elements(stream, at + size))}
        elif size is not None and size <= 8:
            fields[eid] = _read(stream, at, size)
    if _uint(fields.get(0x83, b"\0")) != 1 or "width" in found:  # TrackType 1: video; the first one counts
        return
    if 0xB0 in video and 0xBA in video:
        found["width"], found["height"] = _uint(video[0xB0]), _uint(video[0xBA])
    if 0x23E383 in fields:
        found["frame_ns"] = _uint(fields[0x23E383])
    if 0xD7 in fields:
        found["track"] = _uint(fields[0xD7])
