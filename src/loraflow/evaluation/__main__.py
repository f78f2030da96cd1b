"""`python -m loraflow.evaluation CONFIG.json`: the result check's process entry point (exit 0 whatever the
verdict: the runner reads the verdict from scorecard.json and the events, not from the exit code)."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from loraflow.trainer.events import emit


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loraflow.evaluation CONFIG.json", file=sys.stderr)
        return 2
    emit("eval.phase", phase="starting")
    from loraflow.evaluation.config import EvalConfig
    from loraflow.evaluation.evaluate import evaluate

    try:
        evaluate(EvalConfig.read(Path(args[0])))
    except Exception as exc:  # the runner gets a typed error event; the traceback stays in the log
        traceback.print_exc()
        emit("error", code="evaluation_failed", message=f"{type(exc).__name__}: {exc}"[:2000],
             hint="the result check could not run; see the evaluation log")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
