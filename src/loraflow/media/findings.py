"""Findings: what the quality gates say about a dataset, one per problem, each with its fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    ERROR = "error"  # blocks training
    WARNING = "warning"  # informs; training goes ahead
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    message: str
    fix: str = ""
    file: str | None = None

    def line(self) -> str:
        where = f"{self.file}: " if self.file else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.severity.value.upper():7} {where}{self.message}{fix}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.value
        return data


@dataclass
class Report:
    """The outcome of `dataset check` / `prepare`: findings plus the facts a person wants to see."""

    source: str
    findings: list[Finding] = field(default_factory=list)
    images: int = 0
    usable_images: int = 0
    videos: int = 0  # clips found (only scanned for an engine that trains on video)
    usable_videos: int = 0
    pairs: int = 0  # targets with their control images (edit models)
    captioned: int = 0
    total_bytes: int = 0
    resolutions: dict[str, int] = field(default_factory=dict)
    dataset_hash: str | None = None
    output: str | None = None
    pack: str | None = None

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "images": self.images,
            "usable_images": self.usable_images,
            "captioned": self.captioned,
            "pairs": self.pairs,
            "total_bytes": self.total_bytes,
            "resolutions": self.resolutions,
            "dataset_hash": self.dataset_hash,
            "output": self.output,
            "pack": self.pack,
            "findings": [f.to_dict() for f in self.findings],
        }
