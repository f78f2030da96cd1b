"""ai-toolkit's loss_log.db read as it is written: the exact loss and learning rate of each step."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def read_loss_log(path: Path, after: int = -1) -> list[dict[str, float]]:
    """Exact per-step loss and learning rate from ai-toolkit's loss_log.db (read-only), rows after `after`.

    Its `step` is ai-toolkit's loop index (from 0): the row for step N is the loss of the (N+1)th step done.
    Rows are written every 0.25 s, so the newest may be missing while it runs or after a SIGKILL.
    """
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute(
                "SELECT s.step, s.wall_time, l.value_real, r.value_real FROM steps s "
                "LEFT JOIN metrics l ON l.step = s.step AND l.key = 'loss/loss' "
                "LEFT JOIN metrics r ON r.step = s.step AND r.key = 'learning_rate' "
                "WHERE s.step > ? ORDER BY s.step",
                (after,),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []  # being created, or locked past the timeout: the bar's values serve meanwhile
    return [{"step": int(s), "wall_time": w, "loss": loss, "lr": lr} for s, w, loss, lr in rows if loss is not None]


class LossLog:
    """loss_log.db read as the engine writes it: new rows are read at most every 0.2 s, on a miss."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rows: dict[int, tuple[float, float]] = {}
        self._read_at = -1.0

    def reset(self) -> None:
        """After a resume the engine rewrites the rows after its resume step."""
        self._rows.clear()
        self._read_at = -1.0

    def at(self, index: int) -> tuple[float, float] | None:
        """(lr, loss) of loop index `index`, or None when it is not (yet) written."""
        if index not in self._rows and time.monotonic() - self._read_at > 0.2:
            self._read_at = time.monotonic()
            for row in read_loss_log(self.path, max(self._rows, default=-1)):
                self._rows[int(row["step"])] = (row["lr"], row["loss"])
        return self._rows.get(index)
