"""Parser for the builtin trainer's output: `LORAFLOW {json}` lines, plus known failure signatures."""

from __future__ import annotations

import json

from loraflow.hints import match_hint
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.monitor.lines import LineSplitter
from loraflow.trainer.events import PREFIX

_TYPES = {
    "progress": ev.PROGRESS,
    "checkpoint": ev.CHECKPOINT,
    "sample": ev.SAMPLE,
    "phase": ev.PHASE,
    "resumed": ev.RESUMED,
    "warning": ev.WARNING,
    "error": ev.ERROR,
    "done": ev.RESULT,
    "stopped": ev.STOPPED,
    "log": ev.LOG,
    "caching": "caching",
}


class BuiltinParser:
    def __init__(self) -> None:
        self._lines = LineSplitter()
        self._hinted: set[str] = set()
        self.stopped = False  # the trainer said it stopped with a checkpoint (and no later run started)

    def feed(self, chunk: bytes) -> list[EngineEvent]:
        return [e for line in self._lines.feed(chunk) if (e := self.parse_line(line))]

    def flush(self) -> list[EngineEvent]:
        return [e for line in self._lines.flush() if (e := self.parse_line(line))]

    def parse_line(self, line: str) -> EngineEvent | None:
        if line.startswith(PREFIX):
            try:
                data = json.loads(line[len(PREFIX) :])
            except ValueError:
                return None
            kind = data.pop("event", None)
            data.pop("t", None)
            if kind not in _TYPES:
                return None
            if kind == "progress" and data.get("eta_s") is None:
                data.pop("eta_s", None)
            if kind in ("stopped", "phase", "progress"):
                self.stopped = kind == "stopped"
            return EngineEvent(_TYPES[kind], data)
        hint = match_hint(line)
        if hint and hint.code not in self._hinted:  # a traceback repeats its message: report once
            self._hinted.add(hint.code)
            return EngineEvent(ev.ERROR, {"code": hint.code, "message": line.strip()[:500], "hint": hint.hint})
        return None
