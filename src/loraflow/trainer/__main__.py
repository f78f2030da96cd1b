"""`python -m loraflow.trainer CONFIG.json`: the builtin engine's process entry point."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from loraflow.trainer.events import emit


def oom_hint(message: str) -> str:
    return (
        "the GPU ran out of memory: set training.vram_preset to a smaller card (e.g. 16 or 12), "
        "batch_size 1, gradient_checkpointing true, or a lower resolution"
        if "memory" in message.lower()
        else ""
    )


def failure(text: str, exc: BaseException | None = None) -> tuple[str, str]:
    """The error code and hint for what ended the run: the runner shows these, not the traceback.

    The code decides whether a restart can help: a bad model folder or bad input fails at once (a restart
    would print the same error again), a crash or a GPU fault is restarted from the last checkpoint."""
    from loraflow.errors import UserInputError
    from loraflow.hints import match_hint

    if "OutOfMemoryError" in text or "out of memory" in text.lower():
        return "oom", oom_hint(text)
    if isinstance(exc, UserInputError):
        return "bad_input", exc.fix or ""
    hint = match_hint(text)
    if hint is not None:
        return hint.code, hint.hint
    return "crash", ""


def main(argv: list[str] | None = None, after: Any = None) -> int:
    """`after`: what runs in this process after training with the base still loaded (`train`'s `after`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loraflow.trainer CONFIG.json", file=sys.stderr)
        return 2
    # Listen for a stop before the heavy imports (torch takes seconds on a busy machine): a SIGTERM that
    # arrived while they ran used to kill the process with its default action, so a budget stop right
    # after launch ended with no checkpoint. The first line tells the runner a stop is now safe to send.
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, rank 0 speaks for the group
        emit("phase", phase="starting")
    from loraflow.trainer.config import TrainerConfig
    from loraflow.trainer.loop import StopFlag, train

    stop = StopFlag()
    stop.install()
    if early:  # read after install: a signal from here on reaches the StopFlag itself
        stop.requested = True
        emit("log", message=f"signal {early[0]} while starting: stopping after the first step with a checkpoint")
    try:
        return train(TrainerConfig.read(Path(args[0])), stop, after)
    except Exception as exc:  # the runner gets a typed error event; the traceback stays in the log
        traceback.print_exc()
        text = f"{type(exc).__name__}: {exc}"
        code, hint = failure(text, exc)
        emit("error", code=code, message=text[:2000], hint=hint)
        return 1


if __name__ == "__main__":
    sys.exit(main())
