"""This machine's NVIDIA GPUs as nvidia-smi reports them (name, utilisation, memory), or None without one:
a leaf, so the local host and the estimator that names this machine's device both read it the same way."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

QUERY = [
    "nvidia-smi",
    "--query-gpu=index,name,utilization.gpu,memory.used,memory.total",
    "--format=csv,noheader,nounits",
]


def gpu_stats() -> list[dict[str, Any]] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(QUERY, capture_output=True, text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    return parse_nvidia_smi(out)


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    stats = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 5:
            stats.append(
                {
                    "index": int(fields[0]),
                    "name": fields[1],
                    "util": float(fields[2]),
                    "mem_used_mb": float(fields[3]),
                    "mem_total_mb": float(fields[4]),
                }
            )
    return stats
