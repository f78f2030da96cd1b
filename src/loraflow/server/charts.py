"""The job page's loss chart as inline SVG: no JavaScript chart library to ship."""

from __future__ import annotations

from typing import Any


def loss_chart(points: list[tuple[Any, Any]], width: int = 600, height: int = 180) -> str:
    """An inline SVG line of loss by step with labelled axes: no JavaScript chart library to ship."""
    pts = [(int(s), float(v)) for s, v in points if s is not None and v is not None]
    if len(pts) < 2:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    span_x, span_y = max(x1 - x0, 1), max(y1 - y0, 1e-9)
    left, right, top, bottom = 58, 10, 8, 34  # room for the tick labels and axis titles
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / span_x * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / span_y * plot_h

    coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
    ticks = []
    for i in range(5):
        y = y0 + span_y * i / 4
        ticks.append(
            f'<line x1="{left - 4}" y1="{py(y):.1f}" x2="{left + plot_w}" y2="{py(y):.1f}" stroke="#e9ecef"/>'
            f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>'
        )
    for i in range(5):
        x = x0 + span_x * i / 4
        ticks.append(
            f'<line x1="{px(x):.1f}" y1="{top + plot_h}" x2="{px(x):.1f}" y2="{top + plot_h + 4}" stroke="#5f6b7a"/>'
            f'<text x="{px(x):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{round(x)}</text>'
        )
    return (
        f'<svg id="loss-chart" viewBox="0 0 {width} {height}" width="100%" height="{height}" role="img" '
        f'aria-label="loss from {ys[0]:.3f} to {ys[-1]:.3f}" font-size="11" fill="#5f6b7a">{"".join(ticks)}'
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#5f6b7a"/>'
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#5f6b7a"/>'
        f'<text class="axis-title" x="{left + plot_w / 2}" y="{height - 2}" text-anchor="middle">step</text>'
        f'<text class="axis-title" x="12" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">loss</text>'
        f'<polyline fill="none" stroke="#3b5bdb" stroke-width="1.5" points="{coords}"/></svg>'
        f'<p class="muted">step {x0}–{x1}, loss {y0:.4f}–{y1:.4f}</p>'
    )
