"""The `fal` engine: trains through fal.ai's hosted Flux LoRA trainer instead of on a host loraflow runs.

Its command is a small loraflow process (`python -m loraflow.engines.fal_client CONFIG`) that packs the
prepared dataset, uploads it to fal storage, submits to the queue, follows the request's status and
downloads the LoRA, printing the same `LORAFLOW {json}` lines as the builtin trainer. So the runner
launches, follows, stops and resumes it like any other engine, and the job ends in the normal bundle.
What the API takes, what it costs, and which spec keys it cannot honour live in catalog/hosted.yaml.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from loraflow import catalog
from loraflow.engines.base import Command, EngineRequirements, Outcome
from loraflow.engines.external import finish_lora, outcome_for
from loraflow.errors import UserInputError
from loraflow.layout import JobLayout
from loraflow.monitor import events as ev
from loraflow.monitor.builtin_parser import BuiltinParser
from loraflow.monitor.events import EngineEvent
from loraflow.spec import TrainSpec
from loraflow.spec import refused_fields as _refused
from loraflow.trainer.events import STOPPED_EXIT

CONFIG = "fal.json"
KEY_ENV = "FAL_KEY"
# Test-only overrides of fal's base URLs (the emulator's address); never spec keys.
QUEUE_URL_ENV = "FAL_QUEUE_URL"
STORAGE_URL_ENV = "FAL_STORAGE_URL"


def rules() -> dict[str, Any]:
    return catalog.hosted_engines()["fal"]


def refused_fields(spec: TrainSpec) -> list[str]:
    """The spec keys fal's API cannot honour, by name with the fix (what the engine field map asks)."""
    return _refused(spec)


def price_usd(spec: TrainSpec) -> float:
    """What fal charges for this run: its per-step price (catalog/hosted.yaml) times the steps."""
    return round(float(rules()["price"]["usd_per_step"]) * int(spec.training.steps or 0), 4)


def quote(spec: TrainSpec) -> dict[str, Any]:
    """The price shown before submit (`loraflow estimate`, `loraflow train`), with its source."""
    price = rules()["price"]
    return {
        "engine": "fal",
        "app": rules()["app"],
        "steps": spec.training.steps,
        "usd_per_step": price["usd_per_step"],
        "cost_usd": price_usd(spec),
        "source": price["source"],
    }


def preflight(spec: TrainSpec, force: bool = False) -> None:
    """Refused before anything is recorded or uploaded: without FAL_KEY fal answers 401, and a run priced
    over budget.max_usd would spend more than the user allowed (fal bills the whole run at once)."""
    if not os.environ.get(KEY_ENV):
        raise UserInputError(
            "engine fal needs FAL_KEY in the environment; nothing was started",
            where="engine.name",
            fix="create a key at https://fal.ai/dashboard/keys and `export FAL_KEY=<key id>:<secret>` "
            "(never put it in the spec)",
        )
    cap, price = spec.budget.max_usd, price_usd(spec)
    if cap is not None and price > cap and not force:
        raise UserInputError(
            f"fal charges ${price:.2f} for {spec.training.steps} steps, over budget.max_usd ${cap:.2f}",
            where="budget.max_usd",
            fix="lower training.steps, raise budget.max_usd, or pass --force to train anyway",
        )


class FalParser(BuiltinParser):
    """The client's lines, plus the `cost` it reports when fal completes the run."""

    def parse_line(self, line: str) -> EngineEvent | None:
        from loraflow.trainer.events import PREFIX

        if line.startswith(PREFIX + '{"event": "cost"'):
            try:
                data = json.loads(line[len(PREFIX) :])
            except ValueError:
                return None
            return EngineEvent(ev.COST, {"usd": float(data["usd"]), "priced_per": "step", "source": "fal"})
        return super().parse_line(line)


class FalEngine:
    name = "fal"

    def requirements(self, spec: TrainSpec) -> EngineRequirements:
        return EngineRequirements(min_vram_gb=0, disk_gb=1)  # the GPU is fal's

    def render(
        self, spec: TrainSpec, layout: JobLayout, job_id: str, model_path: str, dataset_hash: str | None = None
    ) -> dict[str, str]:
        # create_masks defaults to true on fal's side: a face-mask-weighted loss the spec never asked for.
        fal_input: dict[str, Any] = {"steps": spec.training.steps, "create_masks": False}
        if spec.dataset.trigger_word:
            fal_input["trigger_word"] = spec.dataset.trigger_word
        fal_input.update(spec.engine.options)  # only the options catalog/hosted.yaml lists get past validation
        config = {
            "app": rules()["app"],
            "input": fal_input,
            "dataset_dir": layout.dataset,
            "caption_extension": spec.dataset.caption_extension,
            "lora_path": self._engine_lora(spec, layout),
            "config_path": str(PurePosixPath(layout.engine, "fal_config.json")),
            "state_path": str(PurePosixPath(layout.run, "fal-request.json")),
            "usd_per_step": rules()["price"]["usd_per_step"],
            "job_id": job_id,
        }
        return {CONFIG: json.dumps(config, indent=2) + "\n"}

    def command(self, spec: TrainSpec, layout: JobLayout, python: str) -> Command:
        exe = sys.executable if python == "auto" else python
        return Command(
            [exe, "-m", "loraflow.engines.fal_client", str(PurePosixPath(layout.engine, CONFIG))],
            env_names=[KEY_ENV, QUEUE_URL_ENV, STORAGE_URL_ENV, "LORAFLOW_FAL_POLL_S"],
            env={"PYTHONUNBUFFERED": "1"},
        )

    def parser(self, spec: TrainSpec) -> FalParser:
        return FalParser()

    @staticmethod
    def _engine_lora(spec: TrainSpec, layout: JobLayout) -> str:
        return str(PurePosixPath(layout.engine, f"{spec.name}-fal.safetensors"))  # as fal sent it

    def final_lora(self, spec: TrainSpec, layout: JobLayout) -> str:
        return self._engine_lora(spec, layout)

    def prepare_resume(self, spec: TrainSpec, layout: JobLayout) -> list[str]:
        state = Path(layout.run) / "fal-request.json"
        if state.exists():  # the client follows the request it already paid for; it never submits twice
            return [f"following fal request {json.loads(state.read_text()).get('request_id')} again"]
        return []

    def collect(self, spec: TrainSpec, layout: JobLayout) -> list[EngineEvent]:
        return []  # fal keeps no intermediate checkpoints and renders no samples

    def finish(self, spec: TrainSpec, layout: JobLayout) -> str:
        return finish_lora(Path(self._engine_lora(spec, layout)), layout.output, spec.name, spec.output.lora_format)

    def outcome(self, exit_code: int | None, final_exists: bool, parser: object = None) -> Outcome:
        if exit_code == STOPPED_EXIT:
            return Outcome(False, True, None, "stopped; resuming follows the same fal request")
        return outcome_for("the fal client", exit_code, final_exists)
