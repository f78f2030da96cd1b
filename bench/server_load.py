"""One server process under many concurrent jobs: API latency, live-event lag, CPU and memory.

N jobs are created and N stand-in engines (threads in a separate process, so the server is not
helped by sharing it) append progress events to the store at one per second each, the way job
runners do. Meanwhile one client lists jobs, reads job pages and follows one job over SSE. Reported
per N: median and p95 API latency, median and p95 event lag (append -> SSE delivery), the server's
CPU seconds per wall second and its peak RSS, plus the ratio of each to the N=10 run.

    .venv/bin/python bench/server_load.py [10 100 500]

The job runners themselves are not part of this measurement (each running job has its own runner
process; see docs/service.md).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import proc_stats, start_serve

REPO = Path(__file__).resolve().parents[1]
SECONDS = 12


def _writers(url: str, home: str, ids: list[str], stop_at: float) -> None:
    os.environ["LORAFLOW_HOME"] = home
    from loraflow.jobs.store import Store

    store = Store()

    def run(job_id: str, offset: float) -> None:
        time.sleep(offset)
        step = 0
        while time.time() < stop_at:
            step += 1
            store.append_event(job_id, "progress", {"step": step, "total": 1000, "t": time.time()}, step=step)
            time.sleep(1.0)

    threads = [threading.Thread(target=run, args=(j, i / max(len(ids), 1))) for i, j in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run(n: int) -> dict[str, float]:
    home = tempfile.mkdtemp(prefix=f"lf-bench-{n}-")
    sys.path.insert(0, str(REPO / "src"))
    os.environ["LORAFLOW_HOME"] = home
    from loraflow.jobs.store import Store
    from loraflow.server.tokens import create_token
    from loraflow.spec import parse_spec

    store = Store()
    token = create_token(store, "bench")
    spec = parse_spec({"name": "b", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux"})
    ids = [store.create_job(spec, owner="bench").id for _ in range(n)]
    for job_id in ids:
        store.transition(job_id, "preparing")
    server, base = start_serve(home, 18000 + n, workers=0)
    headers = {"Authorization": f"Bearer {token}"}
    stop_at = time.time() + SECONDS
    writers = mp.get_context("spawn").Process(target=_writers, args=(base, home, ids, stop_at))
    writers.start()
    lags: list[float] = []

    def follow() -> None:
        with httpx.stream("GET", f"{base}/api/jobs/{ids[0]}/events/stream", headers=headers, timeout=None) as s:
            for line in s.iter_lines():
                if line.startswith("data: ") and '"t"' in line:
                    lags.append(time.time() - json.loads(line[6:])["data"]["t"])
                if time.time() > stop_at:
                    return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    cpu0, _ = proc_stats(server.pid)[:2]
    t0 = time.time()
    latencies: list[float] = []
    peak = 0
    with httpx.Client(base_url=base, headers=headers) as client:
        i = 0
        while time.time() < stop_at:
            start = time.perf_counter()
            if i % 2:
                client.get("/api/jobs", params={"limit": 50}).raise_for_status()
            else:
                client.get(f"/api/jobs/{ids[i % n]}").raise_for_status()
            latencies.append(time.perf_counter() - start)
            peak = max(peak, proc_stats(server.pid)[1])
            i += 1
            time.sleep(0.05)
    cpu1, _ = proc_stats(server.pid)[:2]
    wall = time.time() - t0
    writers.join()
    server.terminate()
    server.wait()
    q = statistics.quantiles
    return {
        "jobs": n,
        "api_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "api_p95_ms": round(q(latencies, n=20)[18] * 1000, 2),
        "event_lag_p50_ms": round(statistics.median(lags) * 1000, 1) if lags else None,
        "event_lag_p95_ms": round(q(lags, n=20)[18] * 1000, 1) if len(lags) > 2 else None,
        "server_cpu_per_s": round((cpu1 - cpu0) / wall, 3),
        "server_peak_rss_mb": round(peak / 2**20, 1),
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 100, 500]
    rows = [run(n) for n in sizes]
    base = rows[0]
    for row in rows:
        for key in ("api_p50_ms", "server_cpu_per_s", "server_peak_rss_mb"):
            if base[key]:
                row[f"{key}_vs_{base['jobs']}"] = round(row[key] / base[key], 2)
    out = REPO / "bench" / "results" / "server_load.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
