"""The builtin trainer with the result check in its own process: `python -m loraflow.evaluation.after_training
EVAL_CONFIG ENGINE_CONFIG` trains exactly as `python -m loraflow.trainer ENGINE_CONFIG`, then, with the base
model still loaded, runs the effect check and scorecard (`evaluate`) over the final LoRA and every kept
checkpoint, so the check does not load the base model a second time (on FLUX.1 that load was over half of
the check's time: bench/README.md).

The check here means what the separate process's means: the same config (rendered by the builtin engine
next to the trainer's, engine/evaluation.json), prompts, seeds, metrics, scorecard.json and event lines
(written to `evaluation/evaluation.log`, where the separate process's log goes, with the config it ran as
`evaluation/config.json`). The trained adapter is taken off the transformer first, so the baseline renders
see the base model alone, and each LoRA file goes on and off as the separate process does it.

It never fails the training: a check that raises is a warning, and the runner's check stage then runs the
separate process (running/scoring.py). A check that died hard (killed, out of memory) leaves its marker
behind, and the next run of the trainer (a restart resumes at the last step) skips it rather than die again.
"""

from __future__ import annotations

import contextlib
import io
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.trainer.events import emit

if TYPE_CHECKING:  # imported where used: the trainer listens for a stop before torch is imported
    from loraflow.evaluation.config import EvalConfig
    from loraflow.trainer.config import TrainerConfig

ATTEMPT = "in-trainer.attempt"  # in evaluation/: present while the check runs in the trainer
LOG = "evaluation.log"


class Forward(io.TextIOBase):
    """The check's output into its log; each of its phases also as a `checking` phase line in the trainer's
    log, which the runner's stall detector reads (a check that stops moving is ended: monitor/stall.py)."""

    def __init__(self, log: Any, trainer_out: Any) -> None:
        self.log, self.trainer_out = log, trainer_out

    def write(self, text: str) -> int:
        self.log.write(text)
        if '"event": "eval.phase"' in text:
            self.log.flush()
            with contextlib.redirect_stdout(self.trainer_out):
                emit("phase", phase="checking")
        return len(text)

    def flush(self) -> None:
        self.log.flush()


def config_for(trainer: TrainerConfig, path: Path, total: int) -> EvalConfig:
    """The rendered config with the files this run delivered (the final LoRA and each kept checkpoint)
    and, when no image was held out, the training images as the reference (what the runner would write)."""
    from loraflow.evaluation.config import EvalConfig
    from loraflow.evaluation.evaluate import images_in
    from loraflow.evaluation.plan import kept_checkpoints, loras_to_check

    cfg = EvalConfig.read(path)
    out = Path(trainer.output_dir)
    final = out / f"{trainer.name}.safetensors"
    loras = loras_to_check(final if final.is_file() else None, kept_checkpoints(out / "checkpoints"), total)
    update: dict[str, Any] = {"loras": loras}
    if cfg.reference_kind == "holdout" and not images_in(Path(cfg.reference_dir)):
        update |= {"reference_dir": cfg.training_dir, "reference_kind": "training"}
    return cfg.model_copy(update=update)


def ready_for_check(parts: Any) -> None:
    """The loaded parts as the separate process would have them: the base model alone (`strip_adapters`),
    and on a GPU the text encoders back on it where they fit (training put them on the CPU once its
    captions were encoded; the check encodes its prompts and the held-out captions)."""
    import torch

    from loraflow.trainer.components import fits_beside

    strip_adapters(parts.transformer)
    device = next(parts.transformer.parameters()).device
    if device.type == "cuda":
        torch.cuda.empty_cache()  # what the optimizer's state and the gradients held
        for encoder in (parts.clip, parts.t5):
            if next(encoder.parameters()).device.type != "cuda" and fits_beside(encoder, device):
                encoder.to(device)


def strip_adapters(transformer: Any) -> None:
    """The base model alone: the trained adapter off (its weights are in the LoRA files the check loads)
    and the blocks uncompiled (the check's renders are not the shapes they were compiled for; the
    separate process renders uncompiled too)."""
    names = list(getattr(transformer, "peft_config", {}) or {})
    if names:
        transformer.delete_adapters(names)
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None  # what nn.Module.compile set: back to the eager forward


def check_in_trainer(trainer: TrainerConfig, eval_path: Path, parts: Any, total: int) -> dict[str, Any] | None:
    """The check over what this run delivered, on the loaded `parts`; the scorecard, or None when skipped
    or failed (a warning says why; the runner then runs the separate process)."""
    from loraflow.evaluation.evaluate import evaluate
    from loraflow.evaluation.plan import CONFIG
    from loraflow.evaluation.scorecard import SCORECARD

    cfg = config_for(trainer, eval_path, total)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    attempt = out / ATTEMPT
    if attempt.exists():
        (out / SCORECARD).unlink(missing_ok=True)
        emit("warning", message="result check: an earlier check in the trainer did not finish; the runner "
                                "checks in a process of its own instead")
        return None
    if not cfg.loras:
        return None
    attempt.touch()
    (out / SCORECARD).unlink(missing_ok=True)  # only this run's answer counts
    cfg.write(out / CONFIG)  # what ran, with this host's paths
    emit("phase", phase="checking", loras=len(cfg.loras))
    try:
        ready_for_check(parts)
        with open(out / LOG, "w", encoding="utf-8") as log, contextlib.redirect_stdout(Forward(log, sys.stdout)):
            card = evaluate(cfg, parts)
    except Exception as exc:  # never the training's failure: the runner checks in a separate process
        traceback.print_exc()
        (out / SCORECARD).unlink(missing_ok=True)
        emit("warning", message=f"result check in the trainer failed ({type(exc).__name__}: {exc}"[:500] + ")")
        card = None
    attempt.unlink(missing_ok=True)
    if card is not None:
        emit("log", message=f"result check: {len(cfg.loras)} LoRA file(s) scored in "
                            f"{card['timings']['total_s']} s with the base model already loaded")
    return card


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m loraflow.evaluation.after_training EVAL_CONFIG ENGINE_CONFIG", file=sys.stderr)
        return 2
    from loraflow.trainer.__main__ import main as train_main

    def after(parts: Any, total: int) -> None:
        from loraflow.trainer.config import TrainerConfig

        try:
            check_in_trainer(TrainerConfig.read(Path(args[1])), Path(args[0]), parts, total)
        except Exception as exc:  # no config (a job rendered before this existed), a bad one: never a failed run
            traceback.print_exc()
            emit("warning", message=f"result check in the trainer could not start ({type(exc).__name__}: {exc}"[:500]
                 + "); the runner checks in a process of its own")

    return train_main([args[1]], after)  # the trainer's config last, as in `python -m loraflow.trainer`


if __name__ == "__main__":
    sys.exit(main())
