"""One `loraflow serve` process following N running remote jobs at once, each on its own SSH connection.

Each job is a handed-off remote trainer (as a runner leaves it after launching): its lease points at a
real OpenSSH server on loopback with its own pinned known_hosts file, so every job is its own
connection, as it would be with one rented host per job. A stand-in engine (one separate process)
appends a builtin-format progress line to each job's log once a second, stamped with the time it was
written. The server's worker claims the jobs, its follower adopts them and follows all of them from
one event loop. Meanwhile a client times API calls and follows one job over SSE.

Reported per N: API latency p50/p95, event lag (line written -> event stored, over all jobs; and
-> delivered over SSE for one job) p50/p95, the server's CPU seconds per wall second, peak RSS and
thread count, plus ratios to the smallest N.

    .venv/bin/python bench/follower_load.py [10 100 500]
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from common import proc_stats, start_serve

REPO = Path(__file__).resolve().parents[1]
SECONDS = 20


def _engine(logs: list[str], stop_at: float) -> None:
    """The stand-in trainers: one progress line per job per second, each stamped when written."""
    files = [open(p, "a", buffering=1) for p in logs]  # noqa: SIM115
    step = 0
    while time.time() < stop_at:
        step += 1
        start = time.time()
        for i, f in enumerate(files):
            data = {"event": "progress", "step": step, "total": 100000, "loss": 0.1, "sent": time.time()}
            f.write("LORAFLOW " + json.dumps(data) + "\n")
            if i % 50 == 49:
                time.sleep(0.01)
        time.sleep(max(0.0, 1.0 - (time.time() - start)))


def _q95(values: list[float]) -> float | None:
    return round(statistics.quantiles(values, n=20)[18], 1) if len(values) > 2 else None


def run(n: int) -> dict[str, object]:
    base_dir = Path(tempfile.mkdtemp(prefix=f"lf-follow-{n}-"))
    home = base_dir / "home"
    os.environ["LORAFLOW_HOME"] = str(home)
    sys.path.insert(0, str(REPO / "src"))
    from loraflow.hosts.ssh import SshEndpoint, SshHost
    from loraflow.jobs.store import Store
    from loraflow.layout import JobLayout
    from loraflow.running.follower import handoff_file
    from loraflow.running.following import FollowState, follow_file
    from loraflow.server.tokens import create_token
    from loraflow.spec import parse_spec
    from loraflow.testing.sshd import start_sshd
    from loraflow.testing.vast_emulator import free_port

    sshd = start_sshd(base_dir / "sshd", "MaxStartups 2000\n")
    port, key = sshd.port, sshd.key
    remote = base_dir / "remote"
    store = Store()
    token = create_token(store, "bench")
    spec = parse_spec({
        "name": "f", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux",
        "compute": {"provider": "ssh", "ssh": {"host": "127.0.0.1", "port": port, "user": "root",
                                                "identity_file": str(key)}},
        "monitor": {"stall_minutes": 60},
    })  # fmt: skip
    pinned = base_dir / "known_hosts"
    SshHost(SshEndpoint("127.0.0.1", port, "root", str(key), str(pinned))).check()  # OpenSSH pins the key
    engine_pid_file = base_dir / "engine.pid"
    logs: list[str] = []
    ids: list[str] = []
    for _ in range(n):
        job = store.create_job(spec, owner="bench")
        for state in ("preparing", "provisioning", "training"):
            store.transition(job.id, state)
        for stage in ("prepare", "render", "acquire"):
            store.mark_stage_done(job.id, stage)
        local = JobLayout(str(job.folder))
        Path(local.run).mkdir(parents=True, exist_ok=True)
        known = Path(local.run) / "known_hosts"  # one pinned file per job: one connection per job
        shutil.copy(pinned, known)
        root = remote / job.id
        (root / "run").mkdir(parents=True)
        logs.append(str(root / "run" / "train.log"))
        endpoint = SshEndpoint("127.0.0.1", port, "root", str(key), str(known))
        lease = {"provider": "ssh", "ssh": endpoint.to_dict(), "root": str(root), "ready": True,
                 "started_at": time.time(), "price_usd_h": 0.0}  # fmt: skip
        store.update(job.id, lease=lease, worker="gone", heartbeat_at=datetime.now(UTC) - timedelta(hours=1))
        FollowState(attempt=1, processed=False).save(follow_file(local))
        handoff_file(local).write_text("{}")
        ids.append(job.id)
    stop_at = time.time() + 3600
    engine = mp.get_context("spawn").Process(target=_engine, args=(logs, stop_at), daemon=True)
    engine.start()
    engine_pid_file.write_text(str(engine.pid))
    for path in logs:  # every stand-in trainer's pid is the engine's
        Path(path).with_name("train.pid").write_text(str(engine.pid))

    server, url = start_serve(str(home), free_port(), workers=n + 10)
    headers = {"Authorization": f"Bearer {token}"}
    adopted_by = time.time() + 600
    while store.count_jobs(owner="bench") and time.time() < adopted_by:
        got = sum(1 for j in ids if store.events(j, types=["follower.adopted"], latest=True))
        if got == n:
            break
        time.sleep(1)
    adopt_s = round(time.time() - (adopted_by - 600), 1)
    # Following for real: every job has had a progress line stored since it was adopted.
    streaming_by = time.time() + 600
    while time.time() < streaming_by:
        behind = [j for j in ids if (store.get(j).step or 0) < 2]
        if not behind:
            break
        time.sleep(1)
    streaming_s = round(time.time() - (adopted_by - 600), 1)
    time.sleep(3)  # settle
    window_start = time.time()
    window_end = window_start + SECONDS
    sse_lags: list[float] = []

    def follow_one() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("GET", f"{url}/api/jobs/{ids[0]}/events/stream", headers=headers, timeout=None) as s,
        ):
            for line in s.iter_lines():
                if line.startswith("data: ") and '"sent"' in line:
                    sent = json.loads(line[6:])["data"]["sent"]
                    if sent >= window_start:
                        sse_lags.append((time.time() - sent) * 1000)
                if time.time() > window_end:
                    return

    threading.Thread(target=follow_one, daemon=True).start()
    cpu0, _, _ = proc_stats(server.pid)
    latencies: list[float] = []
    peak_rss = peak_threads = 0
    with httpx.Client(base_url=url, headers=headers) as client:
        i = 0
        while time.time() < window_end:
            start = time.perf_counter()
            if i % 2:
                client.get("/api/jobs", params={"limit": 50}).raise_for_status()
            else:
                client.get(f"/api/jobs/{ids[i % n]}").raise_for_status()
            latencies.append((time.perf_counter() - start) * 1000)
            _, rss, threads = proc_stats(server.pid)
            peak_rss, peak_threads = max(peak_rss, rss), max(peak_threads, threads)
            i += 1
            time.sleep(0.05)
    cpu1, _, _ = proc_stats(server.pid)
    server.send_signal(signal.SIGKILL)  # not a clean stop: that would hand every job to a runner process
    server.wait()
    engine.kill()
    sshd.stop()
    stored: list[float] = []
    for job_id in ids:
        for event in store.events(job_id, types=["progress"], limit=100000):
            sent = event.data.get("sent")
            if sent and window_start <= sent <= window_end - 2:
                stored.append((event.ts.timestamp() - sent) * 1000)
    lines_written = n * SECONDS
    types = Counter(e.type for j in ids[:50] for e in store.events(j, limit=100000) if e.type != "progress")
    types = dict(sorted(types.items()))
    shutil.rmtree(base_dir, ignore_errors=True)
    return {
        "jobs": n,
        "ssh_connections": n,
        "adopted_all_in_s": adopt_s,
        "all_streaming_in_s": streaming_s,
        "event_types": types,
        "api_p50_ms": round(statistics.median(latencies), 1),
        "api_p95_ms": _q95(latencies),
        "event_lag_stored_p50_ms": round(statistics.median(stored), 1) if stored else None,
        "event_lag_stored_p95_ms": _q95(stored),
        # Below 1: lines read in the same round are coalesced (the newest progress of a round is kept).
        "progress_events_per_line": round(len(stored) / max(1, lines_written - 2 * n), 2),
        "event_lag_sse_p50_ms": round(statistics.median(sse_lags), 1) if sse_lags else None,
        "event_lag_sse_p95_ms": _q95(sse_lags),
        "server_cpu_per_s": round((cpu1 - cpu0) / SECONDS, 3),
        "server_peak_rss_mb": round(peak_rss / 2**20, 1),
        "server_threads": peak_threads,
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 100, 500]
    rows = []
    for n in sizes:
        rows.append(run(n))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for row in rows:
        for key in ("server_cpu_per_s", "server_peak_rss_mb", "server_threads", "event_lag_stored_p95_ms"):
            if base.get(key) and row.get(key) is not None:
                row[f"{key}_vs_{base['jobs']}"] = round(float(row[key]) / float(base[key]), 2)  # type: ignore[arg-type]
    out = REPO / "bench" / "results" / "follower_load.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
