"""musubi-tuner's console read into engine events: the run-local `steps:` bar made cumulative, saves,
resumes, the caching scripts' log lines and errors."""

from __future__ import annotations

import re

from loraflow.engines.kohya_parser import error_events
from loraflow.engines.musubi_files import STATE_DIR, STEP_FILE, offset_of
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.monitor.lines import LineSplitter
from loraflow.monitor.tqdm import UpdateThenPostfix, parse_tqdm

_STEPS = re.compile(  # anchored: the caching bars and the sampling bars have other labels or none
    r"^steps:\s+(\d+)%\|[^|]*\|\s*(\d+)/(\d+)\s+\[([\d:]+)<([\d:?]+),\s+([\d.]+|\?)(s/it|it/s)"
    r"(?:,\s*avr_loss=([\d.eE+-]+|-?nan|-?inf))?"
)
_LOG = re.compile(r"^(INFO|WARNING|ERROR|DEBUG|CRITICAL):[\w.]+:(.*)$")  # logging.basicConfig's format
_GLUED = re.compile(r"(?<=\S)(?=(?:INFO|WARNING|ERROR|CRITICAL|DEBUG):[\w.]+:)")
_RESUME = re.compile(r"resume training from local state: (.+)$")
# musubi_experts.marker: one expert's run of a Wan 2.2 A14B job, the cumulative step and total it counts from
_RUN = re.compile(r"^loraflow: musubi run from step (\d+) of (\d+): the (high|low)-noise expert")


class MusubiParser:
    """musubi's console: the `steps:` bar (run-local count, made cumulative), save/state/resume lines, the
    caching scripts' log lines and errors."""

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self.offset = 0  # the step this run resumed at: musubi's bar and file names restart at 0
        self.total: int | None = None  # the job's steps, when this run trains only part of them (one expert)
        self.expert: str | None = None  # which Wan 2.2 expert this run trains
        self.expert_saved: str | None = None  # the expert whose final file this run saved
        self._bar = UpdateThenPostfix()

    @property
    def nan_loss(self) -> bool:
        return self._bar.nan_loss

    def feed(self, chunk: bytes) -> list[EngineEvent]:
        return [e for line in self._lines.feed(chunk) for e in self.parse_line(line)]

    def flush(self) -> list[EngineEvent]:
        out = [e for line in self._lines.flush() for e in self.parse_line(line)]
        return out + self._bar.flush()

    def parse_line(self, line: str) -> list[EngineEvent]:
        """A log record written while the bar is drawn (no newline after a bar) shares its line: split it off."""
        out: list[EngineEvent] = []
        for part in _GLUED.split(line):
            log = _LOG.match(part.strip())
            out += self.parse_message((log.group(2) if log else part).strip())
        return out

    def _progress(self, bar: re.Match[str]) -> list[EngineEvent]:
        """A step's last bar line carries its loss (see UpdateThenPostfix: update() redraws with the previous
        step's avr_loss, then set_postfix() with this step's)."""
        data = parse_tqdm(bar)
        data["step"] += self.offset
        data["total"] = self.total or data["total"] + self.offset
        if data["step"] <= self.offset:
            return []  # the bar drawn (or reset) before any step of this run
        return self._bar.line(data, bar.group(8))

    def parse_message(self, text: str) -> list[EngineEvent]:
        bar = _STEPS.search(text)
        if bar:
            return self._progress(bar)
        m = re.match(r"saving checkpoint: (.+)$", text)
        if m:
            path = m.group(1)
            step = STEP_FILE.search(path)
            if step:
                cumulative = offset_of(path) + int(step.group(1))
                return [EngineEvent(ev.CHECKPOINT, {"step": cumulative, "path": path})]
            self.expert_saved = self.expert or ("high" if path.endswith("_high_noise.safetensors") else None)
            return [EngineEvent(ev.LOG, {"message": f"LoRA saved: {path}"})]
        m = _RUN.match(text)
        if m:
            self.offset, self.total, self.expert = int(m.group(1)), int(m.group(2)), m.group(3)
            return [EngineEvent(ev.LOG, {"message": text.removeprefix("loraflow: ")})]
        m = _RESUME.match(text)
        if m:
            state = STATE_DIR.search(m.group(1).rstrip("/"))
            self.offset = offset_of(m.group(1)) + (int(state.group(1)) if state else 0)
            return [EngineEvent(ev.RESUMED, {"step": self.offset})]
        if text.startswith("running training"):
            return [EngineEvent(ev.PHASE, {"phase": "training"})]
        if text.startswith(("Encoding dataset [", "Encoding with ")):  # each family names its text encoder
            return [EngineEvent(ev.PHASE, {"phase": "caching"})]
        if text.startswith("Load dataset config from") or text.startswith("Loading DiT model from"):
            return [EngineEvent(ev.PHASE, {"phase": "preparing"})]
        m = re.match(r"gradient accumulation steps / .*= (\d+)", text)
        if m:
            self._bar.accumulation = int(m.group(1))
            return []
        m = re.match(r"total optimization steps / 学習ステップ数: (\d+)", text)
        if m:
            return [EngineEvent(ev.LOG, {"message": text, "total": self.total or int(m.group(1)) + self.offset})]
        return error_events(text)
