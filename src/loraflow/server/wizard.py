"""The new-job wizard's parts that are not routes: the background auto-caption run a page polls, and the
Start form's defaults, the spec it describes, kept input and refusal messages."""

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
from loraflow.server.uploads import CONTROL, captions, controls


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


GPU_CHOICES = (1, 2, 4, 8)  # compute.gpus: the machines Vast.ai rents whole
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


# The Start form's fields outside "Advanced settings", each kept as typed when the page comes back.
CHOICES = ("engine", "where", "network.rank", "network.alpha", "caption_backend", "sample_prompts", "budget_usd")


def kept_input(form: dict[str, Any]) -> dict[str, Any]:
    """What the user typed in the Start form, to fill it in again when the page comes back with an error."""
    values = {k.split(".", 1)[1]: str(v) for k, v in form.items() if k.startswith("training.") and str(v).strip()}
    return {
        "name": str(form.get("name") or ""),
        "trigger": str(form.get("trigger_word") or ""),
        "chosen_model": str(form.get("base_model") or ""),
        "chosen_preset": str(form.get("vram_preset") or ""),
        "chosen_gpus": str(form.get("gpus") or "1"),
        "values": values,
        "chosen": {k: str(form.get(k) or "") for k in CHOICES},
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


def settings_spec(folder: Path, form: dict[str, Any]) -> dict[str, Any]:
    """The spec the Start form describes: empty fields are left to the defaults, JSON values read as JSON."""
    training: dict[str, Any] = {}
    for key, value in form.items():
        if key.startswith("training.") and str(value).strip():
            text = str(value).strip()
            try:
                training[key.split(".", 1)[1]] = json.loads(text)
            except ValueError:
                training[key.split(".", 1)[1]] = text
    if form.get("vram_preset"):  # a training key (the form used to put it at the spec's top level)
        training["vram_preset"] = _number(form["vram_preset"])
    dataset: dict[str, Any] = {"path": str(folder), "trigger_word": str(form.get("trigger_word") or "").strip() or None}
    if (folder / CONTROL).is_dir():  # the pairs uploaded for an edit model (the model's own checks judge them)
        dataset["control"] = CONTROL
    if str(form.get("caption_backend") or "").strip():
        dataset["captions"] = {"backend": str(form["caption_backend"]).strip()}
    raw: dict[str, Any] = {
        "name": str(form.get("name") or "lora").strip(),
        "dataset": dataset,
        "base_model": str(form.get("base_model") or "tiny-flux"),
    }
    if str(form.get("engine") or "").strip():
        raw["engine"] = str(form["engine"]).strip()
    typed = {key: str(form.get(f"network.{key}") or "").strip() for key in ("rank", "alpha")}
    network = {key: _number(text) for key, text in typed.items() if text}
    if network:
        raw["network"] = network
    compute: dict[str, Any] = {}
    gpus = str(form.get("gpus") or "1").strip()
    if gpus != "1":  # kept as typed when not a number: the spec names compute.gpus and the fix
        compute["gpus"] = int(gpus) if gpus.isdigit() else gpus
    if training:
        raw["training"] = training
    prompts = [line.strip() for line in str(form.get("sample_prompts") or "").splitlines() if line.strip()]
    if prompts:
        raw["sampling"] = {"prompts": prompts}
    if str(form.get("budget_usd") or "").strip():
        raw["budget"] = {"max_usd": _number(form["budget_usd"])}
    where = str(form.get("where") or "").strip()
    if where.startswith("ssh:"):
        compute |= {"provider": "ssh", "target": where[4:]}
    elif where:
        compute["provider"] = where
    if compute:
        raw["compute"] = compute
    return raw


def _number(value: Any) -> Any:
    """A form field's number as a number (pydantic then names the key if it is not one)."""
    text = str(value).strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def where_choices(config: Any) -> list[tuple[str, str]]:
    """Where a web user may train: only what the operator granted (this server, its named SSH hosts, the
    providers it rents from), as (form value, label)."""
    grants = getattr(config, "grants", None)
    providers = sorted(grants.providers) if grants else ["local", "vastai"]
    out = [("local", "this server")] if "local" in providers else []
    out += [(f"ssh:{name}", f"SSH host {name}") for name in sorted(grants.ssh_hosts if grants else ())]
    labels = {
        "vastai": "a rented GPU on Vast.ai (priced before renting)",
        "runpod": "a rented GPU on RunPod (priced before renting)",
    }
    out += [(p, labels.get(p, p)) for p in providers if p not in ("local", "ssh")]
    return out


def engine_choices(config: Any) -> dict[str, list[dict[str, Any]]]:
    """Per base model, the engines a web user may pick, with whether this server has each installed (a job on
    this server needs it; a rented host installs its own)."""
    from loraflow.catalog import base_models
    from loraflow.engines.installed import ENTRY, describe

    grants = getattr(config, "grants", None)
    hosted = grants.hosted_engines if grants else frozenset()
    installed = {name: describe(name).found for name in ENTRY}
    out: dict[str, list[dict[str, Any]]] = {}
    for model in base_models().values():
        rows = []
        for name in model.engines:
            if name == "fal" and name not in hosted:
                continue  # spends the operator's fal account: only when granted
            rows.append({"name": name, "here": installed.get(name, True), "default": name == model.default_engine})
        out[model.id] = rows
    return out


def upload_pairs(folder: Path) -> Any:
    """An upload with control images is checked as pairs (every target needs its control, aspects that fit,
    instructions for captions) before a model is chosen: the report names what an edit model would refuse
    (one control a target is judged as Kontext judges it; several as Qwen-Image-Edit, up to three)."""
    from loraflow.dataset.pairs import PairNeeds

    if not (folder / CONTROL).is_dir():
        return None
    several = any(len(found) > 1 for found in controls(folder).values())  # Qwen-Image-Edit's; else Kontext's one
    return PairNeeds(CONTROL, most=3 if several else 1)


def wizard_context(folder: Path, upload_id: str, config: Any = None) -> dict[str, Any]:
    """What the wizard page shows for an upload: its check, its captions and the settings to choose."""
    from loraflow.caption.available import captioner_status
    from loraflow.catalog import base_models, vram_presets
    from loraflow.dataset import DatasetRun
    from loraflow.spec import TrainingSpec

    report = DatasetRun(str(folder), pairs=upload_pairs(folder)).check()
    paired = controls(folder)
    items = [{"name": name, "caption": text, "controls": paired.get(name)} for name, text in captions(folder).items()]
    models = list(base_models().values())
    defaults = model_defaults()
    advanced = [
        {"key": k, "default": defaults[models[0].id][k], "help": f.description or ""}
        for k, f in TrainingSpec.model_fields.items()
        if k in ADVANCED
    ]
    status = captioner_status()
    return {
        "upload_id": upload_id,
        "report": report,
        "items": items,
        "paired": bool(paired),
        "captioners": [name for name, reason in status.items() if reason is None],
        "not_here": {name: reason for name, reason in status.items() if reason is not None},
        "trigger": "",
        "name": "lora",
        "models": models,
        "model_defaults": defaults,
        "chosen_model": models[0].id,
        "chosen_preset": "",
        "chosen_gpus": "1",
        "gpu_choices": GPU_CHOICES,
        "values": {},
        "presets": sorted(vram_presets()),
        "advanced": advanced,
        "engines": engine_choices(config),
        "where": where_choices(config),
        "chosen": {},
        "network_defaults": network_defaults(),
    }


def network_defaults() -> dict[str, dict[str, Any]]:
    """Each model's rank, alpha and sample prompt, shown greyed in the form until the user types their own."""
    from loraflow.catalog import base_models, defaults_for
    from loraflow.spec import NetworkSpec, SamplingSpec

    out = {}
    for model in base_models().values():
        merged = defaults_for(model, model.default_engine, None)
        net = {**NetworkSpec().model_dump(), **merged.get("network", {})}
        prompts = merged.get("sampling", {}).get("prompts") or SamplingSpec().prompts
        out[model.id] = {"rank": net["rank"], "alpha": net["alpha"], "prompts": "\n".join(prompts)}
    return out
