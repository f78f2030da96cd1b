"""The new-job wizard's parts that are not routes: the background auto-caption run a page polls, and the
Start form's defaults, kept input and refusal messages."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.errors import LoraflowError, SpecError, UserInputError
from loraflow.running.submit import DatasetUnfit
from loraflow.server.problems import Problem


@dataclass
class CaptionRun:
    """One auto-caption run over an upload, in a thread of this server: what the page polls."""

    backend: str
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    total: int = 0
    finished: bool = False
    error: str | None = None
    result: dict[str, int] | None = None

    @property
    def elapsed_s(self) -> int:
        return int(time.monotonic() - self.started)

    def start(self, folder: Path, policy: Any) -> CaptionRun:
        threading.Thread(target=self._work, args=(folder, policy), daemon=True).start()
        return self

    def _progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def _work(self, folder: Path, policy: Any) -> None:
        from loraflow.caption.run import caption_folder

        try:
            self.result = caption_folder(folder, policy, on_progress=self._progress)
        except LoraflowError as exc:
            self.error = exc.render()
        except Exception as exc:  # shown on the page; the upload's captions are untouched
            self.error = f"the {self.backend} captioner failed: {exc}"
        finally:
            self.finished = True


ADVANCED = ("steps", "learning_rate", "batch_size", "resolution", "optimizer", "seed", "lr_scheduler")


def model_defaults() -> dict[str, dict[str, str]]:
    """The advanced fields' placeholders per base model: what the job gets when a field is left empty
    (the catalog's values over the schema's), so the page never shows a default that will not apply."""
    from loraflow.catalog import base_models, defaults_for
    from loraflow.spec import TrainingSpec

    schema = TrainingSpec().model_dump(mode="json")
    out: dict[str, dict[str, str]] = {}
    for model in base_models().values():
        merged = {**schema, **defaults_for(model, model.default_engine, None).get("training", {})}
        out[model.id] = {k: json.dumps(merged[k]) if isinstance(merged[k], list) else str(merged[k]) for k in ADVANCED}
    return out


def kept_input(form: dict[str, Any]) -> dict[str, Any]:
    """What the user typed in the Start form, to fill it in again when the page comes back with an error."""
    values = {k.split(".", 1)[1]: str(v) for k, v in form.items() if k.startswith("training.") and str(v).strip()}
    return {
        "name": str(form.get("name") or ""),
        "trigger": str(form.get("trigger_word") or ""),
        "chosen_model": str(form.get("base_model") or ""),
        "chosen_preset": str(form.get("vram_preset") or ""),
        "values": values,
    }


def start_error(exc: Problem | UserInputError) -> dict[str, Any]:
    """A refusal as a heading and one line per problem (every spec problem, every dataset error)."""
    if isinstance(exc, SpecError):
        return {"title": f"The settings have {len(exc.problems)} problem(s):", "lines": exc.problems}
    if isinstance(exc, DatasetUnfit):
        return {"title": "Dataset not fit to train:", "lines": [f.line() for f in exc.report.errors]}
    if isinstance(exc, UserInputError):
        return {"title": exc.render(), "lines": []}
    lines = exc.detail.split("; ") if exc.extra.get("findings") else [exc.detail] if exc.detail else []
    return {"title": f"{exc.title[:1].upper()}{exc.title[1:]}:" if lines else exc.title, "lines": lines}
