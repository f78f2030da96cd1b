"""The Engine seam: knows one trainer, nothing about where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from loraflow.layout import JobLayout
from loraflow.monitor.events import EngineEvent
from loraflow.spec import TrainSpec


@dataclass(frozen=True)
class EngineRequirements:
    min_vram_gb: int
    disk_gb: int
    cuda: str | None = None
    image: str | None = None
    setup_script: str | None = None


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env_names: list[str] = field(default_factory=list)  # secrets: values are injected only at launch
    env: dict[str, str] = field(default_factory=dict)  # plain settings (PYTHONUNBUFFERED, ...)
    cwd: str | None = None  # the engine's checkout when it must run from there


@dataclass(frozen=True)
class Outcome:
    ok: bool
    stopped: bool
    lora: str | None
    message: str
    more: bool = False  # one run of several finished (Wan 2.2's high-noise expert on musubi): launch the next


class LogParser(Protocol):
    def feed(self, chunk: bytes) -> list[EngineEvent]: ...

    def flush(self) -> list[EngineEvent]: ...


class Engine(Protocol):
    name: str

    def requirements(self, spec: TrainSpec) -> EngineRequirements: ...

    def render(
        self, spec: TrainSpec, layout: JobLayout, job_id: str, model_path: str, dataset_hash: str | None = None
    ) -> dict[str, str]: ...

    def command(self, spec: TrainSpec, layout: JobLayout, python: str) -> Command: ...

    def parser(self, spec: TrainSpec) -> LogParser: ...

    def outcome(self, exit_code: int | None, final_exists: bool, parser: Any = None) -> Outcome: ...

    def final_lora(self, spec: TrainSpec, layout: JobLayout) -> str: ...

    def prepare_resume(self, spec: TrainSpec, layout: JobLayout) -> list[str]: ...

    def collect(self, spec: TrainSpec, layout: JobLayout) -> list[EngineEvent]: ...

    def finish(self, spec: TrainSpec, layout: JobLayout) -> str: ...
