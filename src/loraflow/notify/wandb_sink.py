"""Weights & Biases, when enabled in the spec and installed: loss, lr, speed, samples and the spec go to a
run named after the job. Any failure becomes a warning event; W&B can never fail a job."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from loraflow.monitor.events import EngineEvent
from loraflow.spec import TrainSpec


class WandbSink:
    def __init__(self, spec: TrainSpec, job_id: str, job_dir: Path) -> None:
        self.spec, self.job_id, self.job_dir = spec, job_id, job_dir
        self.run: Any = None
        self.disabled = not spec.wandb.enabled
        self.warning: str | None = None

    def _start(self) -> None:
        try:
            import wandb  # type: ignore[import-not-found]

            self.run = wandb.init(
                project=self.spec.wandb.project,
                entity=self.spec.wandb.entity,
                name=self.spec.name,
                id=self.job_id,
                resume="allow",
                config=self.spec.to_dict(),
            )
        except Exception as exc:
            self.disabled = True
            self.warning = f"W&B disabled for this job: {type(exc).__name__}: {exc}"

    def feed(self, event: EngineEvent) -> str | None:
        """Log one event; returns a warning the first time W&B fails."""
        if self.disabled:
            return None
        if self.run is None:
            self._start()
            if self.disabled:
                return self.warning
        try:
            import wandb  # type: ignore[import-not-found]

            if event.type == "progress":
                data = {k: event.data[k] for k in ("loss", "lr", "rate") if k in event.data}
                self.run.log(data, step=int(event.data["step"]))
            elif event.type == "sample.saved":
                path = self.job_dir / event.data["path"]
                self.run.log(
                    {"samples": wandb.Image(str(path), caption=event.data.get("prompt"))}, step=int(event.data["step"])
                )
        except Exception as exc:
            self.disabled = True
            return f"W&B disabled for this job: {type(exc).__name__}: {exc}"
        return None

    def close(self) -> None:
        if self.run is not None and not self.disabled:
            with contextlib.suppress(Exception):
                self.run.finish()
