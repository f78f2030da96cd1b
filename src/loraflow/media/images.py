"""Decoding and normalizing one image: by content, fully decoded, upright, 8-bit RGB.

Files are recognised by what they contain, not by their extension, and decoded completely so that a
truncated download is caught here rather than hours into a rented GPU's run.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from loraflow.media.findings import Finding, Severity

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own per-image limit is checked right after opening; PIL's warning between its limit and twice it
# would only repeat that (its error above twice the limit stays on).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

try:  # HEIC/AVIF decoders are optional plugins
    import pillow_heif  # type: ignore[import-not-found]

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - depends on the environment
    pillow_heif = None

OPTIONAL_FORMATS = {
    ".heic": "pillow-heif",
    ".heif": "pillow-heif",
    ".avif": "pillow (>= 11.3 with AVIF) or pillow-avif-plugin",
}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", *OPTIONAL_FORMATS}
KEEP_AS_IS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass
class DecodedImage:
    image: Image.Image | None  # RGB, EXIF orientation applied; dropped once hashed
    source_format: str
    source_mode: str
    width: int
    height: int
    reencode: bool  # False: the source bytes can be shipped unchanged
    notes: list[str]

    @property
    def extension(self) -> str:
        if not self.reencode:
            return KEEP_AS_IS[self.source_format]
        return "jpg" if self.source_format == "JPEG" else "png"

    def encoded(self, source: bytes) -> bytes:
        if not self.reencode:
            return source
        assert self.image is not None
        buf = io.BytesIO()
        if self.extension == "jpg":
            self.image.save(buf, format="JPEG", quality=95, subsampling=0)
        else:
            self.image.save(buf, format="PNG", optimize=False)
        return buf.getvalue()


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if mode.startswith("I;16") or (mode == "I" and arr.max() > 255) else 1.0
        if mode == "F" and arr.max() <= 1.0:
            scale = 1 / 255.0
        arr = np.clip(np.round(arr / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def _failure(exc: Exception, name: str) -> Finding | None:
    """What a file PIL could not open or decode is: a Finding, or None when it is no image at all."""
    suffix = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
    if isinstance(exc, Image.DecompressionBombError):  # over PIL's own ceiling, whatever the spec allows
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"declares {pixels.group(1)} pixels" if pixels else "declares too many pixels"
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return Finding(
            "decompression_bomb",
            Severity.ERROR,
            f"{declared}, over the hard limit of {ceiling}",
            "downscale the image",
            name,
        )
    if isinstance(exc, UnidentifiedImageError):
        if suffix in OPTIONAL_FORMATS:
            return Finding(
                "unsupported_format",
                Severity.ERROR,
                f"{suffix[1:].upper()} images need a decoder that is not installed",
                f"pip install {OPTIONAL_FORMATS[suffix]}, or convert the file to PNG or JPEG",
                name,
            )
        if suffix in IMAGE_EXTENSIONS:
            return Finding(
                "unreadable_image",
                Severity.ERROR,
                "is not a readable image",
                "re-export the image as PNG or JPEG, or remove it",
                name,
            )
        return None
    code = "truncated_image" if "truncated" in str(exc).lower() else "unreadable_image"
    truncated = code == "truncated_image"
    message = "is truncated (incomplete download or copy)" if truncated else f"cannot be decoded ({exc})"
    return Finding(code, Severity.ERROR, message, "copy the original file again, re-export it, or remove it", name)


OPEN_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


def open_checked(stream: IO[bytes], name: str, max_pixels: int) -> Image.Image | Finding | None:
    """Open (header only) and check the declared size against this image's limit before a pixel is decoded.

    PIL's own ceiling (MAX_IMAGE_PIXELS) stays in force for every thread: a spec's limit can only be
    stricter, never switch the protection off."""
    try:
        img = Image.open(stream)
    except OPEN_ERRORS as exc:
        return _failure(exc, name)
    width, height = img.size
    if width * height > max_pixels:
        return Finding(
            "decompression_bomb",
            Severity.ERROR,
            f"declares {width}x{height} pixels, over the limit of {max_pixels}",
            "downscale the image or raise dataset.checks.max_pixels",
            name,
        )
    return img


def decode(data: bytes, name: str, max_pixels: int) -> DecodedImage | Finding | None:
    """Decode an image; a Finding for a broken one; None when the file is not an image at all."""
    img = open_checked(io.BytesIO(data), name, max_pixels)
    if not isinstance(img, Image.Image):
        return img
    try:
        img.load()
    except OPEN_ERRORS as exc:
        return _failure(exc, name)

    notes: list[str] = []
    source_format = img.format or "UNKNOWN"
    source_mode = img.mode
    if getattr(img, "n_frames", 1) > 1:
        notes.append("animated: the first frame is used")
        img.seek(0)
    orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
    upright = ImageOps.exif_transpose(img) if orientation not in (None, 1) else img
    if orientation not in (None, 1):
        notes.append(f"EXIF orientation {orientation} applied")
    rgb = _to_rgb(upright)
    if source_mode != "RGB":
        notes.append(f"converted from {source_mode} to RGB")
    reencode = (
        source_format not in KEEP_AS_IS
        or source_mode != "RGB"
        or orientation not in (None, 1)
        or bool(notes and notes[0].startswith("animated"))
    )
    return DecodedImage(rgb, source_format, source_mode, rgb.width, rgb.height, reencode, notes)
