"""Builders for the broken and odd images the dataset tests feed in."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(seed: int, size: tuple[int, int] = (300, 300)) -> Image.Image:
    """Distinct random structure per seed, so perceptual hashes differ between seeds."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.NEAREST)


def jpeg_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(
    folder: Path, n: int, size: tuple[int, int] = (300, 300), captions: bool = True, seed: int = 0
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img{i:02d}.jpg").write_bytes(jpeg_bytes(noise_image(seed + i, size)))
        if captions:
            (folder / f"img{i:02d}.txt").write_text(f"picture number {i}")
    return folder


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims an enormous size."""
    data = png_bytes(Image.new("L", (1, 1)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    crc = struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    start = data.index(b"IHDR") - 4
    return data[:start] + struct.pack(">I", len(ihdr)) + chunk + crc + data[start + 8 + len(ihdr) + 4 :]


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    """Every file under root with size and mtime, to prove nothing was written or changed."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
