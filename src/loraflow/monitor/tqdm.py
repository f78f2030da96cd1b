"""tqdm's bar fields (n/total, elapsed<remaining, rate in it/s or s/it), as every engine prints them."""

from __future__ import annotations

import re
from typing import Any


def _seconds(clock: str) -> float | None:
    if "?" in clock:
        return None
    parts = [int(p) for p in clock.split(":")]
    total = 0
    for p in parts:
        total = total * 60 + p
    return float(total)


def parse_tqdm(match: re.Match[str]) -> dict[str, Any]:
    step, total = int(match.group(2)), int(match.group(3))
    value, unit = match.group(6), match.group(7)
    rate = None if value == "?" else (float(value) if unit == "it/s" else (1 / float(value) if float(value) else None))
    data: dict[str, Any] = {"step": step, "total": total, "elapsed_s": _seconds(match.group(4))}
    eta = _seconds(match.group(5))
    if eta is not None:
        data["eta_s"] = eta
    if rate is not None:
        data["rate"] = round(rate, 4)
    return data
