"""Issue 33 item 6: a wait over 2 s says what it waits for, also when the output is a pipe or a log.

rich's status line draws only on a terminal; before `cli.output.waiting`, `loraflow offers` (and `train`,
`estimate`, `caption run`) printed nothing at all through a minute of Vast.ai retries when piped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from loraflow.cli import output
from loraflow.testing.vast_offers import make_offers


class _SlowVast(BaseHTTPRequestHandler):
    """A Vast.ai API that holds every request until the test has seen the wait's reason."""

    release = threading.Event()
    asked = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).asked.set()
        type(self).release.wait(120)
        body = json.dumps({"offers": make_offers()}).encode()  # the emulator's market
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_piped_offer_search_names_what_it_waits_for(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowVast)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dataset = Path(__file__).resolve().parents[2] / "examples" / "sample_dataset"
    spec = {"name": "w", "base_model": "tiny-flux", "dataset": {"path": str(dataset), "trigger_word": "lfx"},
            "compute": {"provider": "vastai"}}  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "VAST_URL": f"http://127.0.0.1:{server.server_port}", "VAST_API_KEY": "test-key",
           "LORAFLOW_HOME": str(tmp_path / "home"), "LORAFLOW_VAST_BACKOFF_S": "0"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "loraflow.cli", "offers", str(path), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # written before the request: the reason, while it waits
        assert "asking Vast.ai for offers that fit this job" in first, first
        assert _SlowVast.asked.wait(60), "the offer search never reached the API"
        assert proc.poll() is None  # still waiting on the held request when the reason was already shown
    finally:
        _SlowVast.release.set()
        out, rest = proc.communicate(timeout=120)
        server.shutdown()
    assert proc.returncode == 0, rest
    assert json.loads(out)[0]["offer"]["gpu_name"]  # stdout stays JSON: the reason went to stderr
    assert "Traceback" not in rest


def test_plain_updates_are_spaced_and_the_last_one_is_kept(capsys, monkeypatch) -> None:
    monkeypatch.setattr(type(output.console), "is_terminal", property(lambda self: False))
    with output.waiting("loading the captioner...", gap_s=3600) as status:
        for done in range(1, 51):
            status.update(f"captioning: {done}/50 images")
    lines = capsys.readouterr().err.splitlines()
    # One line for the reason, then not one per image (a log must not fill up), but never without the end.
    assert lines[0] == "loading the captioner..." and lines[-1] == "captioning: 50/50 images"
    assert len(lines) == 2


def test_plain_updates_when_the_gap_has_passed(capsys, monkeypatch) -> None:
    monkeypatch.setattr(type(output.console), "is_terminal", property(lambda self: False))
    with output.waiting("loading...", gap_s=0) as status:
        status.update("1/2")
        status.update("2/2")
    assert capsys.readouterr().err.splitlines() == ["loading...", "1/2", "2/2"]
