"""Console helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status

console = Console(highlight=False, soft_wrap=True)


def err(message: str) -> None:
    Console(stderr=True, highlight=False).print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


class _PlainWait:
    """A wait's reason for a reader that is not a terminal (a pipe, a log file, a CI job).

    rich's status line is a live display that only draws on a terminal, so a piped `train` waiting a
    minute for an offer search used to print nothing at all. Here the reason is written once to stderr (so
    `--json` output on stdout stays parseable), later updates at most every `gap_s` seconds (a log must
    not fill with one line per image), and the last one is never lost.
    """

    def __init__(self, message: str, gap_s: float) -> None:
        self._out = Console(stderr=True, highlight=False, soft_wrap=True)
        self._gap_s = gap_s
        self._started = self._said_at = time.monotonic()
        self._pending: str | None = None
        self._out.print(f"{message}", markup=False)

    def update(self, message: str) -> None:
        now = time.monotonic()
        if now - self._said_at >= self._gap_s:
            self._out.print(message, markup=False)
            self._said_at, self._pending = now, None
        else:
            self._pending = message

    def close(self) -> None:
        if self._pending:
            self._out.print(self._pending, markup=False)
        took = time.monotonic() - self._started
        if took >= 2:
            self._out.print(f"(waited {took:.0f} s)", markup=False)


@contextmanager
def waiting(message: str, gap_s: float = 10.0) -> Iterator[Status | _PlainWait]:
    """Say what is being waited for, on a terminal as rich's status line and otherwise as plain lines.

    Every wait that can pass 2 s (an offer search that retries, a captioner loading its model) goes through
    here, so no reader sees a silent minute, whatever the output is connected to.
    """
    if console.is_terminal:
        with console.status(message) as status:
            yield status
        return
    plain = _PlainWait(message, gap_s)
    try:
        yield plain
    finally:
        plain.close()
