"""docs/engines.md's table, generated from the map so the page and the code never disagree."""

from __future__ import annotations

from loraflow.field_map.fields import FIELDS, LORAFLOW
from loraflow.field_map.rules import ENGINES


def markdown() -> str:
    """The docs table: one row per engine-facing field, one column per engine."""
    labels = {"same": "same", "translated": "**translated**", "refused": "**refused**"}
    lines = ["| field | " + " | ".join(ENGINES) + " |", "| --- |" + " --- |" * len(ENGINES)]
    for field, rules in FIELDS.items():
        cells = []
        for engine in ENGINES:
            rule = rules[engine]
            cell = f"{labels[rule.kind]}: {rule.how}" if rule.how else labels[rule.kind]
            if rule.refused_when:
                cell += f" *Refused* {rule.refused_when}." if rule.how else f" {rule.refused_when}."
            cells.append(cell.replace("|", "\\|"))
        lines.append(f"| `{field}` | " + " | ".join(cells) + " |")
    lines += ["", "Handled by loraflow itself, the same on every engine:", ""]
    lines += [f"- `{prefix}`: {how}" for prefix, how in LORAFLOW.items()]
    return "\n".join(lines) + "\n"


START = "<!-- field-map:start (generated: python -m loraflow.field_map docs/engines.md) -->"
END = "<!-- field-map:end -->"


def with_table(doc: str) -> str:
    """The doc with the generated table put between its markers."""
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{markdown()}{END}{tail}"
