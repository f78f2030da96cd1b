"""One abusive user against `loraflow serve` while a second user works: does the second user notice?

The abuser (mallory), all at once for SECONDS: the ~450-byte YAML alias bomb to /api/quote and
/api/jobs, uploads of six grey 8000x8000 PNGs (~0.5 MB, 384 megapixels to check), 300 server-sent
event streams, and oversize bodies (a 150 MB JSON caption, a 4.4 MB spec). The second user (alice)
meanwhile lists her jobs, reads one, and submits small jobs. Reported: alice's API latency (median,
p95, max) for reads and for submissions, and for each abusive kind how many requests were served and
how many refused, against the service's quotas (server/limits.py, running/maxima.py), plus the
server's CPU and peak memory.

The comparison is made within one run: first alice alone against a fresh server for SECONDS, then
alice beside the abuser against another fresh server; the ratio of her latencies (abused / alone)
says what the abuser costs her on this machine, whatever its speed. The machine's load average is
recorded at each phase's start and end (a shared machine's other work slows both phases).

    .venv/bin/python bench/abuse_load.py [SECONDS]

Loopback only, bounded in time (2 x SECONDS) and count (each abusive loop stops at the end); the
servers are real `loraflow serve --workers 0` with an external check that never answers, so
submitted jobs wait for it instead of training (the bench measures the service, not training).
Results: bench/results/abuse_load.json.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

import httpx
from common import proc_stats, start_serve

REPO = Path(__file__).resolve().parents[1]
SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 30
SPEC = {"name": "work", "base_model": "tiny-flux", "dataset": {"trigger_word": "lfx"}, "training": {"steps": 30}}


def alias_bomb(levels: int = 7) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "name: bomb\nbase_model: tiny-flux\ndataset: {}\n" + "\n".join(lines) + "\n"


def grey_pngs(n: int = 6) -> list[tuple[str, tuple[str, bytes]]]:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8000, 8000), 128).save(buf, format="PNG")
    return [("files", (f"grey{i}.png", buf.getvalue())) for i in range(n)]


def dataset_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted((REPO / "examples" / "sample_dataset").iterdir()):
            zf.write(path, f"photos/{path.name}")
    return buf.getvalue()


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: dict[str, Counter[str]] = {}
        self.times: dict[str, list[float]] = {}

    def add(self, kind: str, code: str, seconds: float | None = None) -> None:
        with self.lock:
            self.codes.setdefault(kind, Counter())[code] += 1
            if seconds is not None:
                self.times.setdefault(kind, []).append(seconds)


def until(stop_at: float, body) -> None:
    while time.monotonic() < stop_at:
        body()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    sys.path.insert(0, str(REPO / "src"))
    os.environ.update(LORAFLOW_PRECHECK_URL="http://127.0.0.1:9/never", LORAFLOW_MAX_CONCURRENT_JOBS="1000")
    chosen = os.environ.get("ABUSE_KINDS", "bombs,uploads,oversize,streams").split(",")  # to look at one alone
    phases = {"alone": phase([]), "abused": phase(chosen)}
    ratios = {}
    for kind in ("alice: list jobs", "alice: read a job", "alice: submit"):
        alone, abused = phases["alone"]["rows"].get(kind), phases["abused"]["rows"].get(kind)
        if alone and abused and alone["p95_ms"]:
            ratios[kind] = {"p50": round(abused["p50_ms"] / alone["p50_ms"], 2),
                            "p95": round(abused["p95_ms"] / alone["p95_ms"], 2)}  # fmt: skip
    print("alice abused / alone: " + "; ".join(f"{k}: p50 x{v['p50']}, p95 x{v['p95']}" for k, v in ratios.items()))
    out = REPO / "bench" / "results" / "abuse_load.json"
    result = {"seconds": SECONDS, "cpus": os.cpu_count(), **phases, "ratios": ratios}
    out.write_text(json.dumps(result, indent=2) + "\n")


def phase(kinds: list[str]) -> dict:
    """One fresh server for SECONDS: alice's loop, and beside it the abusive `kinds` (none: alice alone)."""
    home = tempfile.mkdtemp(prefix="lf-abuse-")
    os.environ["LORAFLOW_HOME"] = home
    load_before = load_average()
    from loraflow.jobs.store import Store
    from loraflow.server.tokens import create_token
    from loraflow.spec import parse_spec
    from loraflow.testing.vast_emulator import free_port

    store = Store()
    tokens = {u: create_token(store, u) for u in ("mallory", "alice")}
    streamed = store.create_job(parse_spec({**SPEC, "dataset": {"path": "."}}, "s"), owner="mallory")
    store.update(streamed.id, state="training")  # a live job whose streams stay open
    server, url = start_serve(home, free_port(), 0)
    tally, pngs, bomb, zipped = Tally(), grey_pngs(), alias_bomb(), dataset_zip()
    auth = {u: {"Authorization": f"Bearer {t}"} for u, t in tokens.items()}
    cpu0, _, _ = proc_stats(server.pid)
    peak_rss, stop_at = 0, time.monotonic() + SECONDS
    open_streams: list[tuple[float, float]] = []  # (opened, closed) of each stream the server accepted

    def timed(kind: str, client: httpx.Client, method: str, path: str, **kw) -> httpx.Response | None:
        started = time.monotonic()
        try:
            answer = client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            tally.add(kind, type(exc).__name__, time.monotonic() - started)
            return None
        tally.add(kind, str(answer.status_code), time.monotonic() - started)
        return answer

    def bombs() -> None:
        with httpx.Client(base_url=url, headers=auth["mallory"], timeout=60) as c:
            until(stop_at, lambda: (timed("alias bomb /api/quote", c, "POST", "/api/quote", json={"spec": bomb}),
                                    timed("alias bomb /api/jobs", c, "POST", "/api/jobs", data={"spec": bomb},
                                          files={"dataset": ("d.zip", zipped)})))  # fmt: skip

    def uploads() -> None:
        with httpx.Client(base_url=url, headers=auth["mallory"], timeout=120) as c:
            until(stop_at, lambda: timed("grey 8000x8000 PNG uploads", c, "POST", "/api/uploads", files=pngs))

    def oversize() -> None:
        caption = b'{"a.png": "' + b"x" * (150 << 20) + b'"}'
        spec = json.dumps({"spec": "name: big\n" + "".join(f"k{i}: {'x' * 60}\n" for i in range(70_000))})
        as_json = {"content-type": "application/json"}
        with httpx.Client(base_url=url, headers=auth["mallory"], timeout=60) as c:
            until(stop_at, lambda: (
                timed("150 MB JSON caption", c, "PUT", "/api/uploads/" + "0" * 32 + "/captions", content=caption,
                      headers=as_json),
                timed("4.4 MB spec", c, "POST", "/api/quote", content=spec, headers=as_json),
            ))  # fmt: skip

    def stream(i: int) -> None:
        path = f"/api/jobs/{streamed.id}/events/stream"
        with httpx.Client(base_url=url, headers=auth["mallory"], timeout=SECONDS + 30) as c:
            try:
                with c.stream("GET", path) as answer:
                    tally.add("SSE streams (300 opened)", str(answer.status_code))
                    if answer.status_code == 200:
                        opened = time.monotonic()
                        try:
                            for _ in answer.iter_bytes():
                                if time.monotonic() > stop_at:
                                    break
                        finally:
                            with tally.lock:
                                open_streams.append((opened, time.monotonic()))
            except httpx.HTTPError as exc:
                tally.add("SSE streams (300 opened)", type(exc).__name__)

    def alice() -> None:  # in a process of her own: 300 abusive client threads must not slow her client
        out = subprocess.run(
            [sys.executable, __file__, "--alice", url, tokens["alice"], str(stop_at - time.monotonic()), streamed.id],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        for kind, code, seconds in json.loads(out.strip().splitlines()[-1]):
            tally.add(kind, code, seconds)

    chosen = [f for f in (bombs, uploads, oversize) if f.__name__ in kinds]
    threads = [threading.Thread(target=f) for f in (*chosen, alice)]
    threads += [threading.Thread(target=stream, args=(i,)) for i in range(300 if "streams" in kinds else 0)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak_rss = max(peak_rss, proc_stats(server.pid)[1])
        time.sleep(0.5)
    cpu1, _, _ = proc_stats(server.pid)
    server.terminate()
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:  # a starved machine: uvicorn's graceful end can take longer
        server.kill()
        server.wait()
    edges = sorted([(a, 1) for a, _ in open_streams] + [(b, -1) for _, b in open_streams], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    result = {
        "abuse": kinds, "load_average_before": load_before, "load_average_after": load_average(),
        "server_cpu_s_per_s": round((cpu1 - cpu0) / SECONDS, 2), "peak_rss_mib": round(peak_rss / 2**20),
        "streams_open_at_most": peak, "rows": rows(tally),
        "alice_submits_ms_in_order": [round(t * 1000) for t in tally.times.get("alice: submit", [])],
    }  # fmt: skip
    report("alice alone" if not kinds else "alice beside the abuser", result)
    return result


def rows(tally: Tally) -> dict[str, dict]:
    out = {}
    for kind in sorted(tally.codes):
        times = sorted(tally.times.get(kind, []))
        row: dict = {"answers": dict(sorted(tally.codes[kind].items()))}
        if times:
            p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
            row.update(p50_ms=round(statistics.median(times) * 1000, 1), p95_ms=round(p95 * 1000, 1),
                       max_ms=round(times[-1] * 1000, 1), n=len(times))  # fmt: skip
        out[kind] = row
    return out


def report(title: str, result: dict) -> None:
    print(f"{title}: {SECONDS} s, load average {result['load_average_before']} -> {result['load_average_after']}, "
          f"server CPU {result['server_cpu_s_per_s']:.2f} s/s, peak RSS {result['peak_rss_mib']} MiB, "
          f"SSE streams open at once at most {result['streams_open_at_most']} (LORAFLOW_MAX_STREAMS_PER_USER: 8)")
    print(f"{'what':32} {'answers':38} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for kind, row in result["rows"].items():
        codes = ", ".join(f"{c}: {n}" for c, n in row["answers"].items())
        times = f"{row['p50_ms']:8.0f} {row['p95_ms']:8.0f} {row['max_ms']:8.0f}" if "p50_ms" in row else ""
        print(f"{kind:32} {codes:38} {times}")
    print(f"alice's submissions in order, ms: {result['alice_submits_ms_in_order']}")


def second_user(url: str, token: str, seconds: float, fallback_job: str) -> None:
    """The second user's loop (list, read, now and then submit); prints [kind, code, seconds] rows as JSON."""
    rows: list[tuple[str, str, float]] = []
    zipped, stop_at = dataset_zip(), time.monotonic() + seconds

    def timed(kind: str, c: httpx.Client, method: str, path: str, **kw) -> httpx.Response | None:
        started = time.monotonic()
        try:
            answer = c.request(method, path, **kw)
        except httpx.HTTPError as exc:
            rows.append((kind, type(exc).__name__, time.monotonic() - started))
            return None
        rows.append((kind, str(answer.status_code), time.monotonic() - started))
        return answer

    def submit(c: httpx.Client) -> httpx.Response | None:
        return timed("alice: submit", c, "POST", "/api/jobs", data={"spec": json.dumps(SPEC)},
                     files={"dataset": ("d.zip", zipped)})  # fmt: skip

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        job_id, n, submits = fallback_job, 0, 0
        while time.monotonic() < stop_at:
            timed("alice: list jobs", c, "GET", "/api/jobs")
            timed("alice: read a job", c, "GET", f"/api/jobs/{job_id}")
            n += 1
            if n % 25 == 1 and submits < 8:  # under her upload quota
                submits += 1
                answer = submit(c)
                if answer is not None and answer.status_code == 201:
                    job_id = answer.json()["id"]
            time.sleep(0.05)
    print(json.dumps(rows))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--alice"]:
        second_user(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
    else:
        main()
