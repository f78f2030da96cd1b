"""The host's dead-man switch pushes its last checkpoint in one presigned PUT, which carries at most 5 GiB:
the watcher and the orchestrator that takes the checkpoint back agree on that bound, and a tar over it is
not pushed (the watch log says why) instead of failing half way. The real watcher script runs here, in
sh, against a loopback server standing in for the bucket and the Vast API."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from loraflow.providers import vast_watch
from loraflow.providers.vastai import SELF_DESTROY


@pytest.fixture
def server() -> Iterator[tuple[str, list[tuple[str, int]]]]:
    calls: list[tuple[str, int]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            calls.append((f"{self.command} {self.path}", length))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_PUT = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", calls
    httpd.shutdown()


def fire(tmp_path: Path, url: str, calls: list[tuple[str, int]]) -> str:
    """Run the watcher with a 1 s heartbeat that nobody touches, a 3000-byte checkpoint, and wait until it
    has destroyed "its instance"; the watch log."""
    home, root = tmp_path / "home", tmp_path / "job"
    (root / "checkpoints" / "step-000010").mkdir(parents=True)
    (root / "checkpoints" / "step-000010" / "adapter.safetensors").write_bytes(b"\0" * 3000)
    watch = home / ".loraflow-watch"
    watch.mkdir(parents=True)
    (watch / "root").write_text(str(root))
    (watch / "upload_url").write_text(f"{url}/rescue/checkpoint.tar?X-Amz-Signature=x")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "CONTAINER_ID": "7", "CONTAINER_API_KEY": "k",
           "LORAFLOW_VAST_API": url}  # fmt: skip
    proc = subprocess.Popen(["/bin/sh", "-c", vast_watch.watch_script(1, 1, SELF_DESTROY)], env=env)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while not any(c.startswith("DELETE") for c, _ in calls) and time.monotonic() < deadline:
        time.sleep(0.1)
    return (watch / "watch.log").read_text()


def test_the_reader_and_the_writer_agree_on_one_puts_bound() -> None:
    from loraflow.running.lease_files import RESCUE_MAX_BYTES

    assert RESCUE_MAX_BYTES == vast_watch.RESCUE_PUT_MAX_BYTES == 5 * 1024**3


def test_a_rescue_tar_over_one_put_is_not_pushed(tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch) -> None:
    url, calls = server
    monkeypatch.setattr(vast_watch, "RESCUE_PUT_MAX_BYTES", 2000)  # the tar of a 3000-byte file is over it
    log = fire(tmp_path, url, calls)
    assert "not pushed" in log and "over one PUT" in log
    assert not [c for c, _ in calls if c.startswith("PUT")]
    assert ("DELETE /api/v0/instances/7/", 0) in calls  # it still destroys itself


def test_a_rescue_tar_within_one_put_is_pushed(tmp_path: Path, server) -> None:
    url, calls = server
    log = fire(tmp_path, url, calls)
    assert "pushed step-000010" in log
    (put,) = [(c, n) for c, n in calls if c.startswith("PUT")]
    assert put[0].startswith("PUT /rescue/checkpoint.tar") and put[1] > 3000
