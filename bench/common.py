"""What the service benches share: a `loraflow serve` process to measure, and its CPU, memory and threads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_serve(home: str, port: int, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """`loraflow serve` on loopback with its own LORAFLOW_HOME; returns once /api/health answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "loraflow.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env={**os.environ, "LORAFLOW_HOME": home}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/api/health")
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return server, url


def proc_stats(pid: int) -> tuple[float, int, int]:
    """CPU seconds so far, resident bytes and thread count of a process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    threads = int(next(x for x in status if x.startswith("Threads:")).split()[1])
    return cpu, rss, threads
