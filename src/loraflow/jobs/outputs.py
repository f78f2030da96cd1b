"""What a job made, where it went, what it rented and how it was let in: named fields over one JSON column.

The jobs table keeps its `artifacts` JSON column with the same keys, so rows written before these fields
existed load unchanged and the API and webhooks still send `artifacts` in the shape docs/jobs.md shows.
Writes name their fields (a misspelt one is refused) and merge into the stored object, so a key this
version does not know is carried along, never dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class JobOutputs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    # what the job made
    bundle: str | None = None  # the newest bundle (.zip) built for the job
    lora: str | None = None  # the trained LoRA file in the job folder
    dataset_hash: str | None = None  # the prepared dataset's manifest digest
    lora_check: dict[str, Any] | None = None  # the result check's verdicts: final, checkpoints, failed_checkpoints
    images: int | None = None  # usable images the dataset check counted
    holdout: list[str] = Field(default_factory=list)  # images kept out of training for the scorecard
    scorecard: dict[str, Any] | None = None  # the result check's summary: best checkpoint and why, rows, verdict
    # where it went
    published: list[dict[str, Any]] = Field(default_factory=list)  # one record per push: type, url, checkpoint_step
    published_bundle: str | None = None  # the bundle the last publish pushed
    approved_checkpoint: int | None = None  # the step a reviewer released (None: the final LoRA)
    # what it rented
    leases: list[dict[str, Any]] = Field(default_factory=list)  # every ended lease with its price, without SSH
    # how it was let in
    trust: str | None = None  # "operator" (CLI, notebook) or "service" (a platform user): webhook address policy
    force_budget: bool = False  # `train --force`: start past the budget estimate
    check: Literal["pending", "allow", "deny"] | None = None  # the platform's external admission check
    swept: bool = False  # the platform sweep settled and registered it
    queued: bool = False  # a service job: the workers start it under their slots and capacity, never a door

    @classmethod
    def load(cls, raw: dict[str, Any] | None) -> JobOutputs:
        """The fields of a stored object. A value this version cannot read is left out of the fields (it
        stays in the column) rather than making the job unreadable."""
        raw = dict(raw or {})
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            unreadable = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            return cls.model_validate({k: v for k, v in raw.items() if k not in unreadable})

    @classmethod
    def checked(cls, fields: dict[str, Any]) -> dict[str, Any]:
        """`fields` as they are stored, after checking each names a field and has its type."""
        unknown = sorted(set(fields) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"JobOutputs has no field {', '.join(unknown)}")
        return cls.model_validate(fields).model_dump(mode="json", include=set(fields))

    def to_json(self) -> dict[str, Any]:
        """The fields set on this job (defaults left out, as the column holds them), for the API and webhooks."""
        return self.model_dump(mode="json", exclude_defaults=True)
