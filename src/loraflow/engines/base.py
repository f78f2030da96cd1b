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


# Optional hooks an engine may have (looked up with getattr: most engines need none of them).


def final_files(engine: Engine, spec: TrainSpec, layout: JobLayout) -> list[str]:
    """Every file of the final result, the final LoRA first: for a two-expert model (Wan 2.2 A14B) the other
    expert's file too (an engine's `final_companions`), so a leased host's copy-back brings the whole pair."""
    companions = getattr(engine, "final_companions", None)
    return [engine.final_lora(spec, layout), *(companions(spec, layout) if companions else [])]


def host_outputs(engine: Engine, spec: TrainSpec, layout: JobLayout) -> str | None:
    """The folder an engine writes its runs into on a leased host when the engine decides what it launches
    next from those files (musubi: which run, which expert, which state to resume from): the runner mirrors
    that folder into the job folder here and decides from the copy (running/lease_files.mirror). None for an
    engine whose launch reads nothing there."""
    outputs = getattr(engine, "host_outputs", None)
    return outputs(spec, layout) if outputs else None


def resume_files(engine: Engine, spec: TrainSpec, layout: JobLayout) -> list[str]:
    """The files of `host_outputs` (in this machine's copy) a new host needs to carry on where the lost one
    stopped: the state the next run resumes from, and what tells which run is next."""
    files = getattr(engine, "resume_files", None)
    return files(spec, layout) if files else []
