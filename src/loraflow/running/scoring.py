"""The effect check and the scorecard, run after training where the base model is (docs/scorecard.md).

The runner writes `evaluation/config.json` into the job folder and runs `python -m loraflow.evaluation` on
it, reads its `LORAFLOW` event lines into the job's events, and keeps the scorecard's summary in the job's
outputs (`scorecard`: the best checkpoint and why, one row per checkpoint, the effect verdict), where the
bundle, the model card, the job page, `jobs show`, the API and the `result.scored` webhook read it.

It runs where the base model is: on this machine for a local job (a local GPU, the CPU tiny model), on
the leased host before it is let go for a job trained there (running/remote_scoring.py, its results
copied back). A check that cannot run (no base model on this machine, an architecture it does not
render, a host without the packages, a crash) is a warning, never a failure: only a measured "the LoRA
does not change the output" fails the job, with `lora_inert`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from loraflow.errors import LoraflowError
from loraflow.evaluation import plan
from loraflow.evaluation.config import LoraUnderTest
from loraflow.evaluation.scorecard import SCORECARD, choose, read_scorecard, summary_rows
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
    """Whether this job's check runs on this machine (a local place) rather than on a leased host."""
    from loraflow.running.place import LocalPlace

    return isinstance(ctx.place, LocalPlace)


def scores_somewhere(ctx: RunContext) -> bool:
    """Whether this job's check can run where it trains (here, or a leased host): images are held out."""
    from loraflow.running.place import RemotePlace

    return scores_here(ctx) or isinstance(ctx.place, RemotePlace)


def warn(ctx: RunContext, message: str) -> None:
    ctx.emit("warning", {"message": f"result check: {message}"})


def score_job(ctx: RunContext, ok_steps: list[int | None]) -> dict[str, Any] | None:
    """Run the check over the files that passed the structural check (step None: the final LoRA).
    Returns the scorecard, or None when it could not run (a warning event says why)."""
    spec = ctx.spec
    if not plan.checks_effect(spec):
        return None
    if not scores_somewhere(ctx):
        warn(ctx, "the effect check and scorecard run where the base model is, and this job's place cannot "
                  "run them: only the structural check ran")
        return None
    job = ctx.refresh()
    layout = JobLayout(str(ctx.layout.root))
    final = Path(job.outputs.lora) if job.outputs.lora and None in ok_steps else None
    kept = [(s, p) for s, p in plan.kept_checkpoints(Path(layout.checkpoints)) if s in ok_steps]
    loras = plan.loras_to_check(final, kept, job.total_steps)
    if not loras:
        return None
    if not scores_here(ctx):
        return score_on_host(ctx, loras, len(job.outputs.holdout))
    out_dir = Path(layout.evaluation)
    if scored_in_trainer(ctx, loras, out_dir, here=True):
        return finish(ctx, 0, read_log(out_dir), out_dir, out_dir / "evaluation.log")
    model = local_model(ctx)
    if model is None:
        warn(ctx, f"the base model {spec.base_model} is not on this machine: no effect check or scorecard")
        return None
    cfg = plan.eval_config(spec, ctx.job_id, layout, model, loras, len(job.outputs.holdout))
    cfg_path = Path(layout.evaluation) / plan.CONFIG
    cfg.write(cfg_path)
    return run_local(ctx, cfg_path, Path(layout.evaluation), spec.catalog_entry.source.startswith("builtin:"))


def read_log(out_dir: Path) -> str:
    log = out_dir / "evaluation.log"
    return log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""


def scored_in_trainer(ctx: RunContext, loras: list[LoraUnderTest], out_dir: Path, here: bool) -> bool:
    """Whether the builtin trainer already checked these files after training, in its own process with the
    base model loaded (evaluation/after_training.py): its scorecard in `out_dir` names every file to check
    (here: by path too, and written after the final LoRA). Entries of files the structural check failed
    are dropped and the best chosen again among the rest, as if they had never been scored."""
    if ctx.engine.name != "builtin" or not loras:
        return False
    card = read_scorecard(out_dir)
    if card is None:
        return False
    by = {(e.get("name"), e.get("step")): e for e in card.get("checkpoints", [])}
    wanted = {(lora.name, lora.step): lora for lora in loras}
    if any(key not in by for key in wanted):
        return False
    if here:
        final = next((Path(lora.path) for lora in loras if lora.name == "final"), None)
        newer = final is None or (out_dir / SCORECARD).stat().st_mtime >= final.stat().st_mtime
        if not newer or any(by[key].get("file") != lora.path for key, lora in wanted.items()):
            return False
    if len(by) != len(wanted):
        card["checkpoints"] = [e for key, e in by.items() if key in wanted]
        card["best"] = choose(card)
        (out_dir / SCORECARD).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    ctx.emit("log", {"message": "result check: scored in the trainer's process, with the base model it had loaded"})
    return True


def score_on_host(ctx: RunContext, loras: list[LoraUnderTest], holdout_count: int) -> dict[str, Any] | None:
    """The check on the job's leased host, where the base model is (running/remote_scoring.py): the builtin
    trainer's own when it ran there after training, else a process of its own."""
    from loraflow.running.remote_scoring import bring_back_in_trainer, run_on_host

    out_dir = Path(ctx.layout.evaluation)
    try:
        if ctx.engine.name == "builtin" and bring_back_in_trainer(ctx) and scored_in_trainer(
            ctx, loras, out_dir, here=False
        ):
            return finish(ctx, 0, read_log(out_dir), out_dir, out_dir / "evaluation.log")
        code, text = run_on_host(ctx, loras, holdout_count)
    except LoraflowError as exc:
        warn(ctx, f"the check could not run on the host ({exc.message}); only the structural check counts")
        return None
    return finish(ctx, code, text, out_dir, out_dir / "evaluation.log")


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
    return finish(ctx, code, sink_text, out_dir, log)


def finish(ctx: RunContext, code: int, sink_text: str, out_dir: Path, log: Path) -> dict[str, Any] | None:
    """What the check's process said (its event lines, its exit code, `scorecard.json` in `out_dir`), into
    the job's events and outputs; the scorecard, or None after a warning when it did not finish."""
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
        said = [x for x in sink_text.splitlines() if x.strip() and not x.startswith(PREFIX)]
        last = f": {said[-1].strip()[-300:]}" if said else ""
        warn(ctx, f"the evaluation ended with code {code}{last}; see {log}")
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


TRIGGER_HINT = (
    "the LoRA works as well without its trigger word: caption what is not the concept so the word alone "
    "carries it, or set evaluation.require_trigger: false to accept a LoRA that needs no trigger"
)
INERT_HINT = (
    "the LoRA's weights are not zero but change nothing visible: raise training.learning_rate or the steps, "
    "check network.alpha (the strength is alpha/rank) and network.targets"
)

