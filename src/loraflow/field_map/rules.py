"""The kinds of rule a field has on an engine: the same meaning, translated, refused, or loraflow's own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from loraflow.spec import TrainSpec


ENGINES = ("builtin", "ai-toolkit", "kohya", "musubi")
Kind = Literal["same", "translated", "refused", "loraflow"]
Refusal = tuple[str, str]  # (why the engine cannot honour the value, the fix)
Check = Callable[["TrainSpec"], Refusal | None]
PINS = {"ai-toolkit": "27a03a91", "kohya": "48d368fa", "musubi": "30c658c4"}  # kept equal to the engines' PIN by a test


@dataclass(frozen=True)
class Rule:
    kind: Kind
    how: str  # one sentence: what the engine is given
    refuse: Check | None = None
    refused_when: str = ""  # the refusal, in words, for the docs table


def same(how: str, refuse: Check | None = None, refused_when: str = "") -> Rule:
    return Rule("same", how, refuse, refused_when)


def translated(how: str, refuse: Check | None = None, refused_when: str = "") -> Rule:
    return Rule("translated", how, refuse, refused_when)


def refused(refused_when: str, refuse: Check) -> Rule:
    """A field the engine has no equivalent for: only its neutral value is accepted."""
    return Rule("refused", "", refuse, refused_when)
