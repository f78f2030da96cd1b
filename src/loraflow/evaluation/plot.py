"""The scorecard as a picture (`scorecard.png` in the bundle and the model card): one line per measure over
the checkpoints' steps, the best one marked. Drawn with PIL (matplotlib is no dependency of loraflow)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from loraflow.evaluation.scorecard import summary_rows

SERIES = [  # key, label, colour
    ("score", "score", (20, 20, 20)),
    ("fit", "fit (held-out loss)", (140, 86, 75)),
    ("similarity", "similarity", (31, 119, 180)),
    ("adherence", "prompt adherence", (44, 160, 44)),
    ("trigger_dependence", "trigger dependence", (255, 127, 14)),
    ("effect", "effect", (148, 103, 189)),
]
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 360, 56, 170, 36, 44


def scorecard_png(card: dict[str, Any]) -> bytes | None:
    """A PNG line chart of a scorecard (or of a job's stored summary, which has its rows), or None when it
    scored nothing."""
    rows = card.get("rows") or summary_rows(card)
    if not rows:
        return None
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=12)
    x0, x1, y0, y1 = LEFT, W - RIGHT, TOP, H - BOTTOM
    d.rectangle([x0, y0, x1, y1], outline=(180, 180, 180))
    d.text((x0, 10), "scorecard per checkpoint (each measure scaled to its range)", fill="black", font=font)
    steps = [r["step"] for r in rows]
    lo, hi = min(steps), max(steps)

    def x_of(step: int) -> float:
        return (x0 + x1) / 2 if hi == lo else x0 + (step - lo) / (hi - lo) * (x1 - x0)

    for step in steps:
        d.line([x_of(step), y1, x_of(step), y1 + 4], fill="black")
        d.text((x_of(step) - 10, y1 + 8), str(step), fill="black", font=font)
    d.text(((x0 + x1) / 2 - 12, H - 18), "step", fill="black", font=font)
    for k, (key, label, colour) in enumerate(SERIES):
        values = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if not values:
            continue
        vlo, vhi = min(v for _, v in values), max(v for _, v in values)
        points = [(x_of(s), y1 - (0.5 if vhi == vlo else (v - vlo) / (vhi - vlo)) * (y1 - y0)) for s, v in values]
        if len(points) > 1:
            d.line(points, fill=colour, width=2)
        for px, py in points:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        d.line([x1 + 12, y0 + 8 + k * 18, x1 + 30, y0 + 8 + k * 18], fill=colour, width=3)
        d.text((x1 + 36, y0 + 1 + k * 18), label, fill="black", font=font)
    best = next((r for r in rows if r["best"]), None)
    if best is not None:
        bx = x_of(best["step"])
        d.line([bx, y0, bx, y1], fill=(214, 39, 40), width=1)
        d.text((bx + 4, y0 + 4), f"best: step {best['step']}", fill=(214, 39, 40), font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
