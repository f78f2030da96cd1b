"""The check stage, between train and package: is what the engine delivered a working LoRA?

1. The structural check (loraflow/lora_check) of the final LoRA and of each kept checkpoint, on the files
   copied back to this machine: one `lora.checked` event per file, the verdicts in the job's outputs
   (`lora_check`), and a checkpoint that fails is marked there (`failed_checkpoints`) so nothing offers it.
2. `evaluate(ctx, verdicts)` (running/evaluation.py): the effect check and the scorecard, run while the
   training host is still held. Its verdict can fail the job too.

A final LoRA that fails either ends the job `failed` with the verdict's code (`lora_inert`,
`lora_invalid`) and a hint naming the likely cause: nothing is packaged or published from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraflow.jobs.states import JobState
from loraflow.layout import HIGH_NOISE, PAIR_FILE
from loraflow.running.context import JobFailed, RunContext
from loraflow.running.evaluation import evaluate

CHECKED = "lora.checked"


def delivered_files(ctx: RunContext) -> list[tuple[int | None, Path]]:
    """The final LoRA (step None) and each kept checkpoint's LoRA, by step; for a two-expert model (Wan 2.2
    A14B) each one's other half too, the high-noise expert's file (the final one whether or not it is there:
    a pair without it is no result), so both files of a pair are judged."""
    out: list[tuple[int | None, Path]] = []
    lora = ctx.refresh().outputs.lora
    if lora:
        out.append((None, Path(lora)))
        if ctx.spec.catalog_entry.experts:
            out.append((None, Path(lora).with_name(f"{ctx.spec.name}{HIGH_NOISE}.safetensors")))
    folder = Path(ctx.layout.checkpoints)
    for ckpt in sorted(folder.glob("step-*")) if folder.is_dir() else []:
        if ckpt.name.endswith(".partial") or not (ckpt / "meta.json").exists():
            continue
        if (ckpt / "lora.safetensors").exists() and ckpt.name[5:].isdigit():
            out.append((int(ckpt.name[5:]), ckpt / "lora.safetensors"))
            if (ckpt / PAIR_FILE).exists():
                out.append((int(ckpt.name[5:]), ckpt / PAIR_FILE))
    return out


def failed_checkpoints(outputs: Any) -> list[int]:
    """Steps of kept checkpoints the check failed (never offered as the job's LoRA or its best)."""
    summary = getattr(outputs, "lora_check", None) or {}
    return [int(s) for s in summary.get("failed_checkpoints", [])]


class ResultCheck:
    name = "check"
    state = JobState.FINISHING
    stop_point = False  # training is over: a stop now would only throw the result away
    needs_place = True  # the effect check runs on the training host before it is let go
    interruptible = True  # it only reads files and writes its verdicts again

    def done(self, ctx: RunContext) -> bool:
        return self.name in ctx.job.stages_done

    def run(self, ctx: RunContext) -> JobState | None:
        from loraflow.lora_check import base_for, check_file, expectation

        spec = ctx.spec
        base = base_for(spec)
        exp = expectation(spec, base)
        verdicts = []
        for step, path in delivered_files(ctx):
            verdict = check_file(path, exp, base, step)
            verdicts.append(verdict)
            ctx.emit(CHECKED, verdict.to_dict())
        # a pair's verdict is its worse file's: the first failing one, else the final LoRA's own
        finals = [v for v in verdicts if v.step is None]
        final = next((v for v in finals if not v.ok), finals[0] if finals else None)
        failed = sorted({v.step for v in verdicts if v.step is not None and not v.ok})
        codes: dict[str, str] = {}
        for v in verdicts:
            if v.step is not None and (str(v.step) not in codes or not v.ok):
                codes[str(v.step)] = v.code
        summary: dict[str, Any] = {
            "final": final.to_dict() if final else None,
            "checkpoints": codes,
            "failed_checkpoints": failed,
            "judged_against": verdicts[0].judged_against if verdicts else "",
        }
        ctx.store.update_outputs(ctx.job_id, lora_check=summary)
        if final is None:
            raise JobFailed("the engine delivered no final LoRA to check", "see the engine's log", "lora_invalid")
        if not final.ok:
            raise JobFailed(f"{final.file}: {final.message}", final.hint, final.code)
        mains = [v for v in verdicts if not v.file.endswith((PAIR_FILE, f"{HIGH_NOISE}.safetensors"))]
        outcome = evaluate(ctx, [v for v in mains if v.step not in failed])
        if outcome is not None and not outcome.ok:
            raise JobFailed(outcome.message, outcome.hint, outcome.code)
        return None
