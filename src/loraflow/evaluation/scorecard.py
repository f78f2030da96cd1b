"""The scorecard of a job's kept checkpoints, and the rule that picks the best one (no torch here: the
bundle, the server and `jobs show` read scorecards on machines without the `train` extra).

The rule (docs/scorecard.md):
1. A checkpoint is eligible when it passes the effect check (the LoRA changes the output) and memorized
   nothing (no sample as close as `evaluation.memorization` to one training image).
2. Its score is its gain over the base model alone, led by the fit to the reference images:
       score = fit + 0.5 * (similarity - base similarity) + 0.25 * (adherence - base adherence)
               + 0.1 * trigger dependence (only when the dataset has a trigger word)
   where fit = 1 - held-out loss / the base model's held-out loss (the training objective on images the
   LoRA never saw, same noise for every checkpoint), similarity is the samples' mean cosine to the
   reference images in the vision encoder's space, adherence their CLIP/SigLIP cosine to their prompts.
3. The best is the eligible checkpoint with the highest score; a tie goes to the earlier step (less
   chance of overfitting). With none eligible there is no best, and the final LoRA stays the default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCORECARD = "scorecard.json"
PLOT = "scorecard.png"
WEIGHTS = {"fit": 1.0, "similarity": 0.5, "adherence": 0.25, "trigger_dependence": 0.1}


def score(entry: dict[str, Any], baseline: dict[str, Any], has_trigger: bool) -> float:
    """The rule's step 2 for one checkpoint."""
    total = WEIGHTS["fit"] * float(entry.get("fit") or 0.0)
    for key in ("similarity", "adherence"):
        total += WEIGHTS[key] * (float(entry.get(key) or 0.0) - float(baseline.get(key) or 0.0))
    if has_trigger:
        total += WEIGHTS["trigger_dependence"] * float(entry.get("trigger_dependence") or 0.0)
    return round(total, 5)


def choose(card: dict[str, Any]) -> dict[str, Any]:
    """Score every entry in place and return the `best` block: its step, name, checkpoint and why."""
    entries = card["checkpoints"]
    for e in entries:
        e["eligible"] = bool(e.get("effect_ok")) and not e.get("memorized")
        e["score"] = None
    eligible = [e for e in entries if e["eligible"]]
    if not eligible:
        reasons = "; ".join(f"{e['name']}: {ineligible_reason(e)}" for e in entries) or "nothing was scored"
        return {"step": None, "name": None, "checkpoint_step": None, "why": f"no checkpoint is eligible ({reasons})"}
    for e in eligible:
        e["score"] = score(e, card.get("baseline") or {}, bool(card.get("trigger_word")))
    best = max(eligible, key=lambda e: (e["score"], -e["step"]))
    return {"step": best["step"], "name": best["name"], "checkpoint_step": best.get("checkpoint_step"),
            "why": explain(best, entries, card)}


def ineligible_reason(entry: dict[str, Any]) -> str:
    if not entry.get("effect_ok"):
        return f"the LoRA barely changes the output (effect {entry.get('effect', 0):.3f})"
    if entry.get("memorized"):
        return f"a sample copies a training image (similarity {entry.get('memorization', 0):.3f})"
    return "eligible"


def explain(best: dict[str, Any], entries: list[dict[str, Any]], card: dict[str, Any]) -> str:
    ref = card.get("reference", "holdout")
    n = card.get("reference_images", 0)
    where = f"{n} held-out image{'s' if n != 1 else ''}" if ref == "holdout" else "the training images (none held out)"
    parts = [
        f"step {best['step']} scores highest ({best['score']:.4f})",
        f"fit {best.get('fit', 0):.4f} (held-out loss {best.get('held_out_loss', 0):.4f})",
        f"similarity {best['similarity']:.3f} to {where}",
        f"prompt adherence {best['adherence']:.3f}",
    ]
    if card.get("trigger_word"):
        parts.append(f"the trigger carries {best['trigger_dependence']:.0%} of the LoRA's effect")
    others = [e for e in entries if e is not best]
    if others:
        parts.append(
            "others: " + ", ".join(
                f"step {e['step']} {e['score']:.4f}" if e["score"] is not None else f"step {e['step']} "
                f"not eligible ({ineligible_reason(e)})" for e in others
            )
        )
    return "; ".join(parts)


def read_scorecard(folder: Path) -> dict[str, Any] | None:
    """The job's scorecard (`<job>/evaluation/scorecard.json`), or None before one was made."""
    path = folder / SCORECARD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def summary_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per checkpoint: what the table in `jobs show`, the job page and the model card shows."""
    best = (card.get("best") or {}).get("step")
    rows = []
    for e in card.get("checkpoints", []):
        rows.append({
            "step": e["step"],
            "name": e["name"],
            "effect": e.get("effect"),
            "fit": e.get("fit"),
            "trigger_dependence": e.get("trigger_dependence") if card.get("trigger_word") else None,
            "similarity": e.get("similarity"),
            "adherence": e.get("adherence"),
            "memorization": e.get("memorization"),
            "face_identity": e.get("face_identity"),
            "score": e.get("score"),
            "eligible": e.get("eligible"),
            "best": e["step"] == best,
        })
    return rows


def markdown_table(card: dict[str, Any]) -> str:
    """The scorecard as a Markdown table (model card; `jobs show` prints the same columns)."""
    def num(v: Any) -> str:
        return "–" if v is None else f"{v:.4f}"

    lines = ["| step | effect | fit | trigger | similarity | adherence | memorization | score |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in summary_rows(card):
        mark = " **best**" if r["best"] else ("" if r["eligible"] else " (not eligible)")
        lines.append(
            f"| {r['step']}{mark} | {num(r['effect'])} | {num(r['fit'])} | {num(r['trigger_dependence'])} "
            f"| {num(r['similarity'])} | {num(r['adherence'])} | {num(r['memorization'])} | {num(r['score'])} |"
        )
    return "\n".join(lines)
