"""Regenerate examples/sample_dataset: small synthetic images with captions (no downloads).

The images are a red "mascot" (the concept the trigger word names) drawn on varied backgrounds, so a
LoRA trained on them has something consistent to learn.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

SCENES = [
    ("a blue sky", (90, 150, 230)),
    ("a green meadow", (70, 160, 80)),
    ("a sandy beach", (225, 200, 140)),
    ("a night street", (25, 25, 60)),
    ("a snowy field", (235, 240, 250)),
    ("a forest", (30, 90, 40)),
    ("a purple room", (120, 60, 150)),
    ("an orange sunset", (240, 130, 50)),
]


def draw(index: int, scene: tuple[str, tuple[int, int, int]], rng: random.Random) -> Image.Image:
    size = 256
    img = Image.new("RGB", (size, size), scene[1])
    d = ImageDraw.Draw(img)
    for _ in range(6):  # background clutter so no two images hash alike
        x, y = rng.randrange(size), rng.randrange(size)
        r = rng.randrange(10, 60)
        shade = tuple(min(255, max(0, c + rng.randrange(-60, 60))) for c in scene[1])
        d.rectangle([x, y, x + r, y + r // 2], fill=shade)
    cx, cy = rng.randrange(80, 176), rng.randrange(90, 170)
    d.ellipse([cx - 45, cy - 45, cx + 45, cy + 45], fill=(210, 30, 40))  # body
    d.ellipse([cx - 20, cy - 20, cx - 5, cy - 5], fill="white")  # eyes
    d.ellipse([cx + 5, cy - 20, cx + 20, cy - 5], fill="white")
    d.arc([cx - 25, cy - 5, cx + 25, cy + 25], 20, 160, fill="black", width=4)
    return img


def main() -> None:
    out = Path(__file__).parent / "sample_dataset"
    out.mkdir(exist_ok=True)
    rng = random.Random(7)
    for i, scene in enumerate(SCENES):
        draw(i, scene, rng).save(out / f"mascot_{i:02d}.jpg", quality=80)
        (out / f"mascot_{i:02d}.txt").write_text(f"[trigger], a red round mascot in front of {scene[0]}\n")


if __name__ == "__main__":
    main()
