"""ai-toolkit's console read into engine events: its job's tqdm bar, saves, resumes, stops and errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

from loraflow.engines.aitoolkit_files import CKPT, held_steps
from loraflow.engines.aitoolkit_loss_log import LossLog
from loraflow.hints import match_hint
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.monitor.lines import LineSplitter
from loraflow.monitor.tqdm import parse_tqdm

_BAR = r"\s*(\d+)%\|[^|]*\|\s*(\d+)/(\d+)\s+\[([\d:]+)<([\d:?]+),\s+([\d.]+|\?)(s/it|it/s)(.*)\]\s*$"
_POSTFIX = re.compile(r"lr:\s*([\d.eE+-]+)\s+loss:\s*([\d.eE+-]+)")
_TRAINING_FOLDER = re.compile(r'^"training_folder":\s*("(?:[^"\\]|\\.)*"),?$')  # from the config it prints


class AitkParser:
    """ai-toolkit's console: the job's own tqdm bar (filtered by its name) and its save/resume/error lines.

    Steps are counted as steps done, as the bar counts them since 27a03a91. Each loop step first sets the
    loss (tqdm redraws at once, still at the old count: that loss is the *next* step's) and then moves the
    count (redrawn only if 0.1 s passed since the last redraw). So a redraw whose count did not move with
    its loss is never taken as a step's loss; where `loss_log.db` is readable its exact values are used
    (its rows are named by the loop index, one less than the step done, and none is written for the first
    step of a run).
    """

    def __init__(self, job_name: str, loss_db: Path | None = None) -> None:
        self._lines = LineSplitter()
        self._bar = re.compile(rf"^{re.escape(job_name)}:{_BAR}")
        self._name = job_name
        self._last_step = -1
        self._run_start = 0  # the step this run of the engine started from
        self._prev: tuple[int, str | None] | None = None  # the last bar line: count, postfix
        self._loss: dict[int, tuple[float, float]] = {}  # step -> (lr, loss) read from the bar
        self._db = LossLog(loss_db) if loss_db else None
        self._db_fixed = loss_db is not None
        self.job_stopped = False
        self.nan_loss = False
        self._zeroed = 0  # `loss is nan` lines whose zeroed step has not been shown yet
        self._skipped = False  # an out-of-memory step: ai-toolkit sets no loss for it and moves the bar on
        self._hinted: set[str] = set()

    def feed(self, chunk: bytes) -> list[EngineEvent]:
        return [e for line in self._lines.feed(chunk) for e in self.parse_line(line)]

    def flush(self) -> list[EngineEvent]:
        return [e for line in self._lines.flush() for e in self.parse_line(line)]

    def _progress(self, bar: re.Match[str]) -> list[EngineEvent]:
        post = _POSTFIX.search(bar.group(8))
        count = int(bar.group(2))
        shown = bar.group(8).strip(", ") or None
        prev, self._prev = self._prev, (count, shown)
        if post:
            value = (float(post.group(1)), float(post.group(2)))
            if prev == (count - 1, shown):
                # the count moved on under the same loss: that step's; and, tentatively, the next one's (a
                # redraw at this count with an equal loss would look the same and carries the next step's)
                self._loss.setdefault(count, value)
                self._loss[count + 1] = value
            elif prev != (count, shown):
                self._loss[count + 1] = value  # loss set before the count moved: the step being done
        if count <= max(self._last_step, self._run_start):
            return []  # nothing done yet, a redraw of the same step, or the resume step shown again
        # A count that moved without its loss line (a step that ran out of memory sets none; a log with lines
        # missing) is still a step done: reported with its total, the loss left unknown.
        shown_loss = None if self._skipped else self._loss.get(count)
        self._skipped = False
        exact = self._db.at(count - 1) if self._db is not None and count - 1 != self._run_start else None
        if exact and (shown_loss is None or f"{exact[1]:.3e}" != f"{shown_loss[1]:.3e}"):
            exact = None  # a row left from before a resume, not yet rewritten
        self._last_step = count
        for old in [k for k in self._loss if k <= count]:
            del self._loss[old]
        data = parse_tqdm(bar)
        if exact or shown_loss:
            data["lr"], data["loss"] = exact or shown_loss
        if self._zeroed and data.get("loss") == 0.0:  # after `loss is nan` ai-toolkit shows the 0.0 it put there
            del data["loss"]
            self._zeroed -= 1
        return [EngineEvent(ev.PROGRESS, data)]

    def _nan(self, text: str) -> list[EngineEvent]:
        """`loss is nan` (printed right after a bar fragment, before that step's own redraw): ai-toolkit
        zeroes the step's loss and trains on; the 0.0 it then shows is no loss, and the run fails at its end."""
        hint = match_hint(text)
        assert hint is not None
        self._zeroed += 1
        self.nan_loss = True
        if hint.code in self._hinted:
            return []
        self._hinted.add(hint.code)
        return [EngineEvent(ev.ERROR, {"code": hint.code, "message": text[:500], "hint": hint.hint})]

    def parse_line(self, line: str) -> list[EngineEvent]:
        text = line.strip()
        bar = self._bar.match(line)
        if bar:
            return self._progress(bar)
        m = _TRAINING_FOLDER.match(text)
        if m and not self._db_fixed:
            folder = Path(json.loads(m.group(1)))
            self._db = LossLog(folder / self._name / "loss_log.db") if folder.is_absolute() else None
            return []
        if text.startswith("Saved checkpoint to "):
            path = text.removeprefix("Saved checkpoint to ")
            m = CKPT.search(path)
            if m:
                return [EngineEvent(ev.CHECKPOINT, {"step": held_steps(int(m.group(1))), "path": path})]
            return [EngineEvent(ev.LOG, {"message": f"final LoRA saved: {path}", "final": path})]
        if text.startswith("#### IMPORTANT RESUMING FROM"):
            return [EngineEvent(ev.LOG, {"message": text.strip("# ")})]
        m = re.match(r"Found step (\d+) in metadata, starting from there", text)
        if m:
            self._run_start = self._last_step = int(m.group(1))
            self._prev = None
            self._loss.clear()
            if self._db is not None:
                self._db.reset()
            return [EngineEvent(ev.RESUMED, {"step": int(m.group(1))})]
        if text.startswith("Loading Flux model") or text.startswith("Loading transformer") or text == "Making pipe":
            return [EngineEvent(ev.PHASE, {"phase": "loading_model"})]
        if text.startswith("Caching latents") or text.startswith("Caching text embeddings"):
            return [EngineEvent(ev.PHASE, {"phase": "caching"})]
        if text.startswith("Running  1 process") or text.startswith("Running 1 process"):
            return [EngineEvent(ev.PHASE, {"phase": "starting"})]
        if text == "Job stopped":
            self.job_stopped = True
            return [EngineEvent(ev.STOPPED, {"step": max(self._last_step, 0)})]
        if text.startswith("# OOM during training step"):
            self._skipped = True
            return [EngineEvent(ev.WARNING, {"message": text.strip("# ")})]
        if text.startswith("Error running job:"):
            message = text.removeprefix("Error running job:").strip()
            hint = match_hint(message)
            self._hinted.add(hint.code if hint else "crash")
            return [
                EngineEvent(
                    ev.ERROR,
                    {"code": hint.code if hint else "crash", "message": message, "hint": hint.hint if hint else ""},
                )
            ]
        hint = match_hint(text)
        if hint is not None and hint.code == "nan_loss":
            return self._nan(text)
        if hint and hint.code not in self._hinted and hint.code != "missing_file":
            self._hinted.add(hint.code)
            return [EngineEvent(ev.ERROR, {"code": hint.code, "message": text[:500], "hint": hint.hint})]
        return []


def guess_job_name(text: str) -> str:
    """The job name from the `# Running job: <name>` banner, for reading a log file on its own."""
    m = re.search(r"# Running job: (.+)", text)
    return m.group(1).strip() if m else ""
