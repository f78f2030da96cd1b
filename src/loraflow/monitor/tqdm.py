"""tqdm's bar fields (n/total, elapsed<remaining, rate in it/s or s/it), as every engine prints them."""

from __future__ import annotations

import math
import re
from typing import Any

from loraflow.hints import hint_for
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent


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



def loss_of(text: str | None) -> float | None:
    """A postfix number as tqdm prints it (`0.343`, `1.2e-05`, `nan`, `inf`); None when there is none."""
    return float(text) if text else None


class UpdateThenPostfix:
    """The `steps:` bar of sd-scripts and musubi-tuner, whose loop calls `update(1)`, then samples and saves,
    then `set_postfix(avr_loss=...)`. `update()` redraws only when tqdm's 0.1 s `mininterval` has passed
    since the last redraw, and then still shows the previous step's avr_loss (none on the first step);
    `set_postfix()` always redraws, with this step's. So on a real GPU every step prints two lines and only
    its last carries its loss; on a fast machine it prints one. A step is therefore settled by its last
    line: when a later step's line arrives, when the output ends, or (without gradient accumulation, where
    nothing else redraws that count) by its second line. With accumulation, `set_postfix()` also redraws each
    micro-batch of the next step at the old count; the last of them is taken (avr_loss is a moving average).
    A redraw of a settled step (tqdm's `close()`) is dropped.

    The engines train on after a NaN loss: the first bar line showing one is the postfix of the step that
    went NaN, reported at once as a `nan_loss` error; `nan_loss` then fails the run when it ends."""

    def __init__(self) -> None:
        self.accumulation = 1
        self.nan_loss = False
        self._pending: dict[str, Any] | None = None
        self._lines = 0  # lines seen for the pending step
        self._previous_text: str | None = None  # the loss text the last settled step ended with
        self._done = -1

    def line(self, data: dict[str, Any], loss_text: str | None) -> list[EngineEvent]:
        """One bar line: `data` from parse_tqdm (the step made cumulative), `loss_text` its avr_loss."""
        if data["step"] <= self._done:
            return []
        out = self._nan(data["step"], loss_text)
        if self._pending is not None and self._pending["step"] != data["step"]:
            out += self._settle()
        self._lines = self._lines + 1 if self._pending is not None else 1
        self._pending = {**data, "loss_text": loss_text}
        if self._lines >= 2 and self.accumulation == 1:
            out += self._settle()
        return out

    def flush(self) -> list[EngineEvent]:
        """The output ended: a step seen once that shows the previous step's loss may be an `update()` redraw
        whose `set_postfix()` never came, so its loss is unknown (the step itself is still reported)."""
        if self._pending is not None and self._lines == 1 and self._pending["loss_text"] == self._previous_text:
            self._pending["loss_text"] = None
        return self._settle()

    def _nan(self, step: int, text: str | None) -> list[EngineEvent]:
        loss = loss_of(text)
        if loss is None or math.isfinite(loss) or self.nan_loss:
            return []
        self.nan_loss = True
        error = {"code": "nan_loss", "message": f"avr_loss={text} at step {step}", "hint": hint_for("nan_loss")}
        return [EngineEvent(ev.ERROR, error)]

    def _settle(self) -> list[EngineEvent]:
        pending, self._pending, self._lines = self._pending, None, 0
        if pending is None:
            return []
        self._done = pending["step"]
        self._previous_text = text = pending.pop("loss_text")
        loss = loss_of(text)
        if loss is not None and math.isfinite(loss):
            pending["loss"] = loss
        return [EngineEvent(ev.PROGRESS, pending)]
