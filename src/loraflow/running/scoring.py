"""The effect check and the scorecard, run after training where the base model is (docs/scorecard.md).

The runner writes `evaluation/config.json` into the job folder and runs `python -m loraflow.evaluation` on
it, reads its `LORAFLOW` event lines into the job's events, and keeps the scorecard's summary in the job's
outputs (`scorecard`: the best checkpoint and why, one row per checkpoint, the effect verdict), where the
bundle, the model card, the job page, `jobs show`, the API and the `result.scored` webhook read it.

It runs on this machine (a local GPU, the CPU tiny model); a job on a rented host gets the structural
check only until the check runs there too (docs/scorecard.md says so). A check that cannot run (no
base model on this machine, an architecture it does not render, a crash) is a warning, never a failure:
only a measured "the LoRA does not change the output" fails the job, with `lora_inert`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from loraflow.evaluation import plan
from loraflow.evaluation.scorecard import SCORECARD, summary_rows
from loraflow.layout import JobLayout
from loraflow.running.context import RunContext
from loraflow.trainer.events import PREFIX

SCORED = "result.scored"
EVENT_NAMES = {"eval.effect": "result.effect", "eval.scored": "result.checkpoint", "eval.phase": "result.phase"}
TIMEOUT_S = 6 * 3600


def local_model(ctx: RunContext) -> str | None:
    """The base model's folder on this machine, without downloading anything; None when it is not here."""
    spec = ctx.spec
    engine_cfg = Path(ctx.layout.engine) / "config.json"
    if ctx.engine.name == "builtin" and engine_cfg.exists():
        return json.loads(engine_cfg.read_text(encoding="utf-8")).get("model_path")
    entry = spec.catalog_entry
    if spec.base_model != entry.id:
        return spec.base_model if (Path(spec.base_model) / "model_index.json").is_file() else None
    if entry.source.startswith("builtin:"):
        from loraflow.trainer.model_source import resolve_model_path

        return str(resolve_model_path(spec))
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(entry.hub_id or "", local_files_only=True)
    except Exception:  # not in this machine's cache
        return None


def scores_here(ctx: RunContext) -> bool:
    """Whether this job's check runs on this machine (a local place): only then are images held out."""
    from loraflow.running.place import LocalPlace

    return isinstance(ctx.place, LocalPlace)


def warn(ctx: RunContext, message: str) -> None:
    ctx.emit("warning", {"message": f"result check: {message}"})


def score_job(ctx: RunContext, ok_steps: list[int | None]) -> dict[str, Any] | None:
    """Run the check over the files that passed the structural check (step None: the final LoRA).
    Returns the scorecard, or None when it could not run (a warning event says why)."""
    spec = ctx.spec
    if not plan.checks_effect(spec):
        return None
    if not scores_here(ctx):
        warn(ctx, "the effect check and scorecard run where the base model is; this job's host is remote, "
                  "so only the structural check ran")
        return None
    model = local_model(ctx)
    if model is None:
        warn(ctx, f"the base model {spec.base_model} is not on this machine: no effect check or scorecard")
        return None
    job = ctx.refresh()
    layout = JobLayout(str(ctx.layout.root))
    final = Path(job.outputs.lora) if job.outputs.lora and None in ok_steps else None
    kept = [(s, p) for s, p in plan.kept_checkpoints(Path(layout.checkpoints)) if s in ok_steps]
    loras = plan.loras_to_check(final, kept, job.total_steps)
    if not loras:
        return None
    cfg = plan.eval_config(spec, ctx.job_id, layout, model, loras, len(job.outputs.holdout))
    cfg_path = Path(layout.evaluation) / plan.CONFIG
    cfg.write(cfg_path)
    return run_local(ctx, cfg_path, Path(layout.evaluation), spec.catalog_entry.source.startswith("builtin:"))


def in_this_process(cfg_path: Path) -> tuple[int, str]:
    """The tiny CPU model's check inside the runner, which has torch and diffusers loaded already (their
    import takes longer than the whole check); the exit code and event lines as the process gives them."""
    import contextlib
    import io

    from loraflow.evaluation.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(cfg_path)])
    return code, out.getvalue()


def run_local(ctx: RunContext, cfg_path: Path, out_dir: Path, tiny: bool = False) -> dict[str, Any] | None:
    """Run the check on this machine: a process of its own (real models: a crash or the GPU memory stays
    there), or inside the runner for the tiny model."""
    log = out_dir / "evaluation.log"
    if tiny:
        code, sink_text = in_this_process(cfg_path)
        log.write_text(sink_text, encoding="utf-8")
    else:
        with open(log, "wb") as sink:
            proc = subprocess.run([sys.executable, "-m", "loraflow.evaluation", str(cfg_path)],
                                  stdout=subprocess.PIPE, stderr=sink, timeout=TIMEOUT_S, check=False)
        code, sink_text = proc.returncode, proc.stdout.decode("utf-8", "replace")
        with open(log, "a", encoding="utf-8") as f:
            f.write(sink_text)
    for line in sink_text.splitlines():
        if not line.startswith(PREFIX):
            continue
        event = json.loads(line[len(PREFIX):])
        name = EVENT_NAMES.get(event.pop("event", ""))
        if name and name != "result.phase":
            event.pop("t", None)
            ctx.emit(name, event)
    card = json.loads((out_dir / SCORECARD).read_text(encoding="utf-8")) if (out_dir / SCORECARD).exists() else None
    if code != 0 or card is None:
        warn(ctx, f"the evaluation ended with code {code}; see {log}")
        return None
    summary = summarize(card)
    ctx.store.update_outputs(ctx.job_id, scorecard=summary)
    ctx.emit(SCORED, summary)
    return card


def summarize(card: dict[str, Any]) -> dict[str, Any]:
    """What the job keeps and sends: no file paths, one row per checkpoint."""
    return {
        "best": card.get("best"),
        "effect_check": card.get("effect_check"),
        "reference": card.get("reference"),
        "reference_images": card.get("reference_images"),
        "baseline": card.get("baseline"),
        "rows": summary_rows(card),
        "timings": card.get("timings"),
    }


INERT_HINT = (
    "the LoRA's weights are not zero but change nothing visible: raise training.learning_rate or the steps, "
    "check network.alpha (the strength is alpha/rank) and network.targets"
)

