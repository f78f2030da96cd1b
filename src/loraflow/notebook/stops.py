"""How a notebook step stops: a NotebookStop naming the fix, shown in red without a traceback."""

from __future__ import annotations

from typing import Any

from loraflow.errors import LoraflowError


class NotebookStop(LoraflowError):
    """A step that cannot go on; the message says what to do."""


def show_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> list[str]:
    """IPython's display of a loraflow error: its message and fix in red, no traceback (the cell still
    fails, so Run All stops there). Bugs (any other exception) keep their full traceback."""
    text = value.render() if isinstance(value, LoraflowError) else str(value)
    first, *rest = text.splitlines() or [""]
    lines = [f"\x1b[31m{etype.__name__}:\x1b[0m {first}", *rest]
    if shell is not None:  # IPython leaves showing to the handler; the cell is marked failed all the same
        shell._showtraceback(etype, value, lines)
    return lines


def install_error_display() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((LoraflowError,), show_error)
