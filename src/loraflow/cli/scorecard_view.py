"""The scorecard in a terminal: one row per checkpoint, the best one marked, and why it was chosen
(`loraflow jobs show` and `loraflow demo` print it)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from loraflow.cli.output import console

COLUMNS = [("effect", "effect"), ("fit", "fit"), ("trigger_dependence", "trigger"), ("similarity", "similarity"),
           ("adherence", "adherence"), ("memorization", "memorization"), ("score", "score")]


def print_scorecard(summary: dict[str, Any] | None) -> None:
    if not summary:
        return
    table = Table(title="scorecard", box=box.SIMPLE)
    table.add_column("step", justify="right")
    for _key, label in COLUMNS:
        table.add_column(label, justify="right")
    for row in summary.get("rows", []):
        step = f"{row['step']} best" if row.get("best") else str(row["step"])
        if not row.get("eligible"):
            step += " (not eligible)"
        table.add_row(step, *("–" if row.get(k) is None else f"{row[k]:.4f}" for k, _ in COLUMNS))
    console.print(table)
    verdict = summary.get("effect_check") or {}
    passed = "passed" if verdict.get("passed") else "FAILED"
    console.print(f"effect check: {passed} — {escape(verdict.get('message', ''))}")
    best = summary.get("best") or {}
    if best.get("step") is not None:
        console.print(f"best checkpoint: step {best['step']} — {escape(best.get('why', ''))}")
    else:
        console.print(f"best checkpoint: none — {escape(best.get('why', ''))}")
