"""`dataset check` and `dataset prepare`: one pass over the source that finds every problem.

`check` reads only. `prepare` writes a normalized copy (images re-encoded only when needed, captions
as UTF-8 .txt with the trigger word placed) plus manifest.json into an output folder that must be
empty or new, so a user's originals and earlier outputs are never overwritten.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import imagehash
from PIL import Image

from loraflow.dataset.captions import decode_caption, finish_caption
from loraflow.dataset.manifest import ManifestFile, pack, write_manifest
from loraflow.dataset.names import hamming, safe_stem, stem_key
from loraflow.dataset.pairs import PairNeeds, Pairs, match_pairs, prepared_names, split_controls, write_sample_controls
from loraflow.dataset.sources import ArchiveLimits, Entry, open_source
from loraflow.errors import UserInputError
from loraflow.media.findings import Finding, Report, Severity
from loraflow.media.images import DecodedImage, decode, open_checked
from loraflow.media.video import VIDEO_EXTENSIONS, VideoError, VideoInfo, VideoNeeds, probe
from loraflow.spec import CaptionPolicy, DatasetChecks

CAPTION_MAX_BYTES = 1 << 20  # captions are read whole: anything bigger is no caption


@dataclass
class _Image:
    entry: Entry
    decoded: DecodedImage
    sha256: str
    phash: int
    caption: str | None
    out_name: str = ""


@dataclass
class _Video:
    entry: Entry
    info: VideoInfo
    sha256: str
    caption: str | None


class DatasetRun:
    """One pass over a dataset source; `check()` returns findings, `prepare()` also writes the copy."""

    def __init__(
        self,
        src: str | Path,
        checks: DatasetChecks | None = None,
        policy: CaptionPolicy | None = None,
        trigger: str | None = None,
        caption_ext: str = "txt",
        video: VideoNeeds | None = None,
        pairs: PairNeeds | None = None,
    ) -> None:
        self.src = Path(src).expanduser()
        self.checks = checks or DatasetChecks()
        self.policy = policy or CaptionPolicy()
        self.trigger = trigger
        self.caption_ext = caption_ext.lstrip(".")
        self.report = Report(source=str(self.src))
        self.images: list[_Image] = []
        self.video = video  # what the engine takes from a clip; None: the engine trains on images only
        self.videos: list[_Video] = []
        self.pairs, self.matched = pairs, Pairs()  # an edit model's controls, by target

    def _scan(self) -> None:
        limits = ArchiveLimits(self.checks.max_archive_bytes, self.checks.max_archive_files)
        entries, findings = open_source(self.src, limits)
        entries, controls = split_controls(entries, self.pairs)
        for f in findings:
            self.report.add(f)
        cap_suffix = "." + self.caption_ext.lower()
        captions: dict[str, Entry] = {}
        others: list[Entry] = []
        for entry in entries:
            if PurePosixPath(entry.path).suffix.lower() == cap_suffix:
                captions[stem_key(entry.path)] = entry
            else:
                others.append(entry)
        paired: set[str] = set()
        for entry in others:
            if PurePosixPath(entry.path).suffix.lower() in VIDEO_EXTENSIONS:
                self._scan_video(entry, captions, paired)
            else:
                self._scan_image(entry, captions, paired)
        if self.pairs:
            template = self.policy.template if self.policy.backend == "template" else None
            found = [(i.entry, i.decoded.width, i.decoded.height, i.caption or template) for i in self.images]
            self.matched = match_pairs(found, controls, self.pairs, self.report, self.checks.max_pixels)
            self.report.pairs = sum(1 for c in self.matched.controls.values() if c)
        for key, entry in captions.items():
            if key not in paired:
                self.report.add(
                    Finding(
                        "orphan_caption",
                        Severity.WARNING,
                        "caption file has no image",
                        "add the image with the same name, or delete the caption",
                        entry.path,
                    )
                )
        self._gates()

    def _scan_image(self, entry: Entry, captions: dict[str, Entry], paired: set[str]) -> None:
        try:
            with entry.open() as stream:  # the header first: a file that is no image, or too big, is never read whole
                head = open_checked(stream, entry.path, self.checks.max_pixels)
            data = entry.read() if isinstance(head, Image.Image) else b""
        except UserInputError as exc:
            self.report.add(Finding("unsafe_archive_member", Severity.ERROR, exc.message, exc.fix or "", entry.path))
            return
        result = decode(data, entry.path, self.checks.max_pixels) if isinstance(head, Image.Image) else head
        if result is None:
            self.report.add(
                Finding("not_an_image", Severity.INFO, "ignored: not an image or a caption", "", entry.path)
            )
            return
        self.report.images += 1
        self.report.total_bytes += entry.size
        if isinstance(result, Finding):
            self.report.add(result)
            return
        for note in result.notes:
            self.report.add(Finding("converted", Severity.INFO, note, "", entry.path))
        caption = self._caption(entry, captions, paired)
        phash = int(str(imagehash.phash(result.image)), 16)
        result.image = None  # pixels are decoded again when writing: memory stays flat for big datasets
        self.images.append(_Image(entry, result, hashlib.sha256(data).hexdigest(), phash, caption))

    def _caption(self, entry: Entry, captions: dict[str, Entry], paired: set[str], clip: bool = False) -> str | None:
        """The caption file paired with an image or clip by stem, with findings about it."""
        key = stem_key(entry.path)
        caption: str | None = None
        if key in captions:
            paired.add(key)
            raw = captions[key].head(CAPTION_MAX_BYTES)
            if raw is None:
                self.report.add(
                    Finding(
                        "caption_too_large",
                        Severity.ERROR,
                        f"caption file is over {CAPTION_MAX_BYTES} bytes",
                        "shorten the caption (it is one line of text)",
                        captions[key].path,
                    )
                )
                raw = b""
            caption, note = decode_caption(raw)
            if note:
                self.report.add(
                    Finding("caption_encoding", Severity.WARNING, note, "save the caption as UTF-8", captions[key].path)
                )
            if not caption:
                self.report.add(
                    Finding(
                        "empty_caption",
                        Severity.WARNING,
                        "caption file is empty",
                        "write a caption, or delete the file to let a captioner fill it",
                        captions[key].path,
                    )
                )
        else:
            severity = Severity.ERROR if self.checks.require_captions else Severity.WARNING
            self.report.add(
                Finding(
                    "missing_caption",
                    severity,
                    "has no caption file",
                    f"add {PurePosixPath(key).name}.{self.caption_ext} or set "
                    + ("dataset.captions.backend: template (captioners read images, not clips)" if clip
                       else "dataset.captions.backend to caption automatically"),
                    entry.path,
                )
            )
        return caption

    def _scan_video(self, entry: Entry, captions: dict[str, Entry], paired: set[str]) -> None:
        """A clip's size, frame count and rate from its header (no decoder); the gates judge them."""
        if self.video is None:
            self.report.add(
                Finding("not_an_image", Severity.INFO, "ignored: video clips train with engine musubi only", "",
                        entry.path)
            )
            return
        self.report.videos += 1
        self.report.total_bytes += entry.size
        try:
            with entry.open() as stream:
                info = probe(stream, entry.path)
        except (VideoError, ValueError, OSError, struct.error, EOFError, RecursionError) as exc:  # hostile headers too
            fix = "re-encode it as MP4 (H.264), e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"
            self.report.add(Finding("video_unreadable", Severity.ERROR, f"cannot read its frames: {exc}", fix,
                                    entry.path))
            return
        digest = hashlib.sha256()
        with entry.open() as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        self.videos.append(_Video(entry, info, digest.hexdigest(), self._caption(entry, captions, paired, clip=True)))

    def _video_gates(self) -> None:
        """Too small, too short for the engine's target_frames, too long: named per clip before any rental."""
        c, needs = self.checks, self.video
        usable: list[_Video] = []
        seen: dict[str, _Video] = {}
        for clip in self.videos:
            info, path = clip.info, clip.entry.path
            if min(info.width, info.height) < c.min_resolution:
                size = f"is {info.width}x{info.height}; its shorter side is under {c.min_resolution} px"
                self.report.add(Finding("too_small", Severity.ERROR, size,
                                        "use a larger original, or lower dataset.checks.min_resolution", path))
                continue
            if info.seconds > c.max_video_seconds:
                self.report.add(Finding("video_too_long", Severity.ERROR,
                                        f"is {info.seconds:.1f} s long, over {c.max_video_seconds:g} s",
                                        "trim it to the motion to learn (Wan clips are a few seconds), or raise "
                                        "dataset.checks.max_video_seconds", path))
                continue
            frames = needs.usable_frames(info) if needs else info.frames
            rate = f" ({frames} at 16 fps from {needs.source_fps:g})" if needs and needs.source_fps else ""
            if needs and frames < needs.min_frames:
                self.report.add(Finding("video_too_short", Severity.ERROR,
                                        f"has {info.frames} frames{rate}; the shortest of engine.options.target_frames "
                                        f"is {needs.min_frames}, so it gives no sample",
                                        "use a longer clip, or add a shorter length (N*4+1) to "
                                        "engine.options.target_frames", path))
                continue
            if needs and frames < needs.max_frames:
                fit = ", ".join(map(str, needs.fitting(frames))) or "the shorter ones"
                self.report.add(Finding("video_short", Severity.WARNING,
                                        f"has {info.frames} frames{rate}: only target_frames {fit} fit, not "
                                        f"{needs.max_frames}",
                                        f"use clips of at least {needs.max_frames} frames, or lower "
                                        "engine.options.target_frames", path))
            if clip.sha256 in seen:
                self.report.add(Finding("duplicate", Severity.WARNING,
                                        f"is an exact duplicate of {seen[clip.sha256].entry.path}", "delete one copy",
                                        path))
                continue
            seen[clip.sha256] = clip
            usable.append(clip)
        self.videos = usable
        self.report.usable_videos = len(usable)
        if needs and (missing := needs.first_frame_finding(len(usable), self.src.name)):
            self.report.add(missing)

    def _gates(self) -> None:
        c = self.checks
        self._video_gates()
        usable: list[_Image] = []
        for img in self.images:
            w, h = img.decoded.width, img.decoded.height
            short, long_ = min(w, h), max(w, h)
            if short < c.min_resolution:
                self.report.add(
                    Finding(
                        "too_small",
                        Severity.ERROR,
                        f"is {w}x{h}; its shorter side is under {c.min_resolution} px",
                        "use a larger original, or lower dataset.checks.min_resolution",
                        img.entry.path,
                    )
                )
                continue
            if long_ / short > c.max_aspect_ratio:
                self.report.add(
                    Finding(
                        "extreme_aspect_ratio",
                        Severity.WARNING,
                        f"is {w}x{h} (aspect {long_ / short:.1f}:1), beyond {c.max_aspect_ratio}:1",
                        "crop it closer to the subject",
                        img.entry.path,
                    )
                )
            usable.append(img)
        seen: dict[str, _Image] = {}
        unique: list[_Image] = []
        for img in usable:
            if img.sha256 in seen:
                self.report.add(
                    Finding(
                        "duplicate",
                        Severity.WARNING,
                        f"is an exact duplicate of {seen[img.sha256].entry.path}",
                        "delete one copy",
                        img.entry.path,
                    )
                )
                continue
            seen[img.sha256] = img
            unique.append(img)
        for i, a in enumerate(unique):
            for b in unique[i + 1 :]:
                distance = hamming(a.phash, b.phash)
                if distance <= c.near_duplicate_distance:
                    self.report.add(
                        Finding(
                            "near_duplicate",
                            Severity.WARNING,
                            f"looks almost the same as {a.entry.path} (distance {distance})",
                            "keep the better of the two",
                            b.entry.path,
                        )
                    )
        self.images = usable
        self.report.usable_images = len(usable)
        self.report.captioned = sum(1 for i in usable if i.caption)
        res = Counter(f"{i.decoded.width}x{i.decoded.height}" for i in usable)
        self.report.resolutions = dict(res.most_common())
        clips = f" and {len(self.videos)} clip(s)" if self.video is not None else ""
        if len(usable) + len(self.videos) < c.min_images:
            self.report.add(
                Finding(
                    "too_few_images",
                    Severity.ERROR,
                    f"{len(usable)} usable image(s){clips}; at least {c.min_images} are needed",
                    "add more images (10-30 is typical for a character or style)",
                )
            )
        if len(usable) + len(self.videos) > c.max_images:
            self.report.add(
                Finding(
                    "too_many_images",
                    Severity.ERROR,
                    f"{len(usable)} images{clips}; at most {c.max_images} are allowed",
                    "remove images or raise dataset.checks.max_images",
                )
            )

    def check(self) -> Report:
        self._scan()
        return self.report

    def prepare(self, out: str | Path, *, drop_bad: bool = False, pack_to: str | Path | None = None) -> Report:
        """Write the normalized dataset; refuse when an error gate fails unless `drop_bad` skips bad files."""
        out = Path(out).expanduser().resolve()
        if self.src.is_dir() and (out == self.src.resolve() or self.src.resolve() in out.parents):
            raise UserInputError(
                f"the output folder {out} is inside the source", fix="choose an output folder outside the dataset"
            )
        if out.exists() and any(out.iterdir()):
            raise UserInputError(
                f"the output folder {out} is not empty",
                fix="choose a new folder; loraflow never overwrites earlier output",
            )
        self._scan()
        blocking = [f for f in self.report.errors if not (drop_bad and f.file)]
        if blocking:
            return self.report
        files = self._write(out)
        self.report.output = str(out)
        extra = {"sample_controls": self.sample_controls} if self.pairs else {}
        self.report.dataset_hash = write_manifest(out, files, self.trigger, self.caption_ext, extra)
        if pack_to:
            pack(out, Path(pack_to))
            self.report.pack = str(pack_to)
        return self.report

    def _write(self, out: Path) -> list[ManifestFile]:
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        taken: set[str] = set()
        written: list[tuple[_Image, str, str, bytes]] = []
        placed: dict[str, list[tuple[str, list[str]]]] = {}  # an edit model's controls, by target file
        for img in self.images:
            stem = safe_stem(img.entry.path, taken)
            name = f"{stem}.{img.decoded.extension}"
            source = img.entry.read()
            again = decode(source, img.entry.path, self.checks.max_pixels)
            assert isinstance(again, DecodedImage)
            data = again.encoded(source)
            (tmp / name).write_bytes(data)
            written.append((img, stem, name, data))
            controls = {e.path: e for e in self.matched.controls.get(img.entry.path, [])}
            placed[name] = prepared_names(stem, list(controls.values()), bool(self.pairs and self.pairs.most > 1))
            for path, names in placed[name]:
                for control in names:  # copied as they are: the engines decode them
                    (tmp / control).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / control).write_bytes(controls[path].read())
        clips: list[tuple[_Video, str, str, str]] = []
        for clip in self.videos:  # copied as they are: musubi decodes them itself
            stem = safe_stem(clip.entry.path, taken)
            name = f"{stem}{PurePosixPath(clip.entry.path).suffix.lower()}"
            with clip.entry.open() as src, (tmp / name).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            clips.append((clip, stem, name, clip.sha256))
        backend = self.policy.backend
        wanted = [(img, name) for img, _, name, _ in written if not img.caption or self.policy.mode == "overwrite"]
        generated: dict[str, str] = {}
        if backend == "template":
            generated = {name: self.policy.template for _, name in wanted}
        elif backend != "existing" and wanted:
            from loraflow.caption.run import run_captioner

            by_path = run_captioner([tmp / name for _, name in wanted], self.policy, trigger=self.trigger)
            generated = {path.name: text for path, text in by_path.items()}
        files: list[ManifestFile] = []
        for img, stem, name, data in written:
            raw = generated.get(name, img.caption or "")
            caption = finish_caption(raw, self.trigger, self.policy)
            origin = (
                f"captioner:{backend}"
                if name in generated
                else ("file" if img.caption else ("trigger" if caption else "none"))
            )
            (tmp / f"{stem}.{self.caption_ext}").write_text(caption + "\n", encoding="utf-8")
            files.append(
                ManifestFile(
                    name,
                    hashlib.sha256(data).hexdigest(),
                    len(data),
                    img.decoded.width,
                    img.decoded.height,
                    caption,
                    origin,
                    img.entry.path,
                    img.decoded.reencode,
                    [names[0] for _, names in placed[name]],
                )
            )
        for clip, stem, name, digest in clips:  # captioners read images: a clip without a caption gets the template
            raw = clip.caption or (self.policy.template if backend == "template" else "")
            caption = finish_caption(raw, self.trigger, self.policy)
            origin = "file" if clip.caption else ("captioner:template" if raw else ("trigger" if caption else "none"))
            (tmp / f"{stem}.{self.caption_ext}").write_text(caption + "\n", encoding="utf-8")
            info = clip.info
            files.append(ManifestFile(name, digest, clip.entry.size, info.width, info.height, caption, origin,
                                      clip.entry.path, False))
        self.sample_controls = write_sample_controls(tmp, self.matched)
        if out.exists():
            out.rmdir()
        tmp.replace(out)
        return files


def check_dataset(src: str | Path, checks: DatasetChecks | None = None, **kw: object) -> Report:
    return DatasetRun(src, checks, **kw).check()  # type: ignore[arg-type]
