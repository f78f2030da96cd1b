"""sd-scripts' console read into engine events: the training bar, saves, resumes and wrapped Rich log records."""

from __future__ import annotations

import re

from loraflow.engines.kohya_files import STEP_FILE
from loraflow.hints import match_hint
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.monitor.lines import LineSplitter
from loraflow.monitor.tqdm import UpdateThenPostfix, parse_tqdm

_STEPS = re.compile(  # anchored: kohya's `validation steps:` and `epoch validation steps:` bars are not training
    r"^steps:\s+(\d+)%\|[^|]*\|\s*(\d+)/(\d+)\s+\[([\d:]+)<([\d:?]+),\s+([\d.]+|\?)(s/it|it/s)"
    r"(?:,\s*avr_loss=([\d.eE+-]+|-?nan|-?inf))?"
)
_RICH = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d )?\s*(INFO|WARNING|ERROR|DEBUG|CRITICAL)\s+(.*?)\s*(\S+\.py:\d+)?\s*$"
)
_CONTINUATION = re.compile(r"^\s{20,}(\S.*?)\s*$")


class KohyaParser:
    """sd-scripts' console: the `steps:` bar (not the nameless sampling bars), save/state/resume lines, and
    Rich log records wrapped over several 80-column lines."""

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self.offset = 0  # steps skipped on a resume: kohya's bar restarts at 0
        self._record: list[str] = []  # the lines of a Rich log record being joined
        self._bar = UpdateThenPostfix()
        self.accumulation = 1  # from the summary: kohya logs the initial step divided by it

    @property
    def nan_loss(self) -> bool:
        return self._bar.nan_loss

    def feed(self, chunk: bytes) -> list[EngineEvent]:
        return [e for line in self._lines.feed(chunk) for e in self._line(line)]

    def flush(self) -> list[EngineEvent]:
        out = [e for line in self._lines.flush() for e in self._line(line)]
        out += self._end_record()
        return out + self._bar.flush()

    def _end_record(self) -> list[EngineEvent]:
        """Join a Rich record's lines: a line filled to the full width was hard-broken mid-word (a long
        path), so it joins without a space; a shorter one broke at a space."""
        if not self._record:
            return []
        width = max(len(f) for f in self._record)
        text = self._record[0]
        for prev, fragment in zip(self._record, self._record[1:], strict=False):
            text += ("" if len(prev) == width else " ") + fragment
        self._record = []
        return self.parse_message(text)

    def _line(self, line: str) -> list[EngineEvent]:
        cont = _CONTINUATION.match(line)
        if cont and self._record:
            self._record.append(re.sub(r"\s+\S+\.py:\d+$", "", cont.group(1)).rstrip())
            return []
        out = self._end_record()
        rich = _RICH.match(line)
        if rich:
            self._record = [rich.group(2)]
            return out
        return out + self.parse_message(line.strip())

    def parse_message(self, text: str) -> list[EngineEvent]:
        bar = _STEPS.search(text)
        if bar:
            data = parse_tqdm(bar)
            data["step"] += self.offset
            data["total"] += self.offset
            if data["step"] == self.offset:
                return []  # the bar drawn before any step of this run
            return self._bar.line(data, bar.group(8))
        m = re.match(r"saving checkpoint: (.+)$", text)
        if m:
            step = STEP_FILE.search(m.group(1))
            if step:
                return [EngineEvent(ev.CHECKPOINT, {"step": int(step.group(1)), "path": m.group(1)})]
            return [EngineEvent(ev.LOG, {"message": f"LoRA saved: {m.group(1)}"})]
        m = re.match(r"skipping (\d+) steps", text)
        if m:
            self.offset = int(m.group(1)) * self.accumulation
            return [EngineEvent(ev.RESUMED, {"step": self.offset})]
        m = re.match(r"gradient accumulation steps / .*= (\d+)", text)
        if m:
            self.accumulation = self._bar.accumulation = int(m.group(1))
            return []
        if text.startswith("resume training from local state:"):
            return [EngineEvent(ev.LOG, {"message": text})]
        if text.startswith("running training") or text.startswith("running training / 学習開始"):
            return [EngineEvent(ev.PHASE, {"phase": "training"})]
        if text.startswith("caching latents") or text.startswith("caching Text Encoder outputs"):
            return [EngineEvent(ev.PHASE, {"phase": "caching"})]
        if text.startswith("loading image sizes") or text.startswith("make buckets"):
            return [EngineEvent(ev.PHASE, {"phase": "preparing"})]
        m = re.match(r"total optimization steps / 学習ステップ数: (\d+)", text)
        if m:
            return [EngineEvent(ev.LOG, {"message": text, "total": int(m.group(1))})]
        return error_events(text)


def error_events(text: str) -> list[EngineEvent]:
    """A known failure (with its hint) or a crashed subprocess in a kohya-family console line, the same for
    sd-scripts and musubi; a missing-file match counts only on a line that reports an error."""
    hint = match_hint(text)
    if hint and (hint.code != "missing_file" or "Error" in text):
        return [EngineEvent(ev.ERROR, {"code": hint.code, "message": text[:500], "hint": hint.hint})]
    if "CalledProcessError" in text:
        return [EngineEvent(ev.ERROR, {"code": "crash", "message": text[:500], "hint": ""})]
    return []
