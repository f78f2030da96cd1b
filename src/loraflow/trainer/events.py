"""How the trainer process reports: one `LORAFLOW {json}` line per event on stdout.

One JSON object per line is exact to parse whatever else the libraries print around it, and is still
readable in `loraflow jobs logs`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

PREFIX = "LORAFLOW "
STOPPED_EXIT = 75  # EX_TEMPFAIL: stopped on request after saving a checkpoint; resumable
PAUSE_FILE = "run/pause-at-step"  # under the output folder: a step number to pause at (checkpoint, STOPPED_EXIT)


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(PREFIX + json.dumps({"event": event, "t": round(time.time(), 3), **data}) + "\n")
    sys.stdout.flush()
