"""The seam after the structural check: the effect check and the scorecard (issue 27, part 2).

`evaluate` is called by the check stage (running/result_check.py) with the structural verdicts of the
final LoRA and of every kept checkpoint (`FileVerdict`, its `step` None for the final one), while the
training host is still held (`ctx.place`). It returns None when it has nothing to say, else an
`Evaluation`: `ok` False fails the job with its `code` (`lora_inert` when the LoRA does not change the
output) and `hint`. Checkpoints whose structural verdict failed (`not v.ok`) are never candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loraflow.lora_check import FileVerdict
    from loraflow.running.context import RunContext


@dataclass
class Evaluation:
    ok: bool
    code: str = "ok"  # "lora_inert" when the effect check finds no effect
    message: str = ""
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def evaluate(ctx: RunContext, verdicts: list[FileVerdict]) -> Evaluation | None:
    """The effect check and scorecard over the files that passed the structural check
    (running/scoring.py, docs/scorecard.md)."""
    from loraflow.running.scoring import INERT_HINT, TRIGGER_HINT, score_job

    if ctx.refresh().outputs.scorecard is not None:
        return None  # scored by an earlier runner of this job
    card = score_job(ctx, [v.step for v in verdicts if v.ok])
    if card is None:
        return None
    verdict = card.get("effect_check") or {}
    passed = bool(verdict.get("passed"))
    code = "ok" if passed else verdict.get("code") or "lora_inert"
    hint = "" if passed else TRIGGER_HINT if code == "trigger_ignored" else INERT_HINT
    return Evaluation(ok=passed, code=code, message=verdict.get("message", ""), hint=hint,
                      details={"best": card.get("best")})
