"""A user's first request to `loraflow serve` costs what later ones cost (issue 29).

Before: the submit door's lazy imports ran inside the first submission: about 1000 modules (torch through
the musubi engine's module, scipy through the perceptual hash, numpy, PIL's plugins, the engines) in a
worker thread that held the GIL: 4.3 s on an idle machine, 17 s on a busy one, and every user's requests
waited meanwhile. Under bench/abuse_load.py that was the second user's submit p95 (4.6 s; later
submissions took 0.05-0.2 s). Timing is not asserted (the machine may be busy); what the request imports is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import EXAMPLES

# A fresh interpreter: in the test process every module is long imported, so nothing would show.
FIRST_REQUESTS = r"""
import io, json, sys, zipfile
from pathlib import Path
from fastapi.testclient import TestClient
from loraflow.jobs.store import Store
from loraflow.server.app import ServiceConfig, create_app
from loraflow.server.ui import install

from loraflow.server.tokens import create_token

store = Store()
auth = {"Authorization": "Bearer " + create_token(store, "alice")}
config = ServiceConfig.from_env()
config.queue_for_workers = True  # the job waits in the store: no runner process starts
app = create_app(store, config, sweep_every_s=None)
install(app)  # as `loraflow serve` builds it
archive = io.BytesIO()
with zipfile.ZipFile(archive, "w") as zf:
    for path in sorted(Path(sys.argv[1]).iterdir()):
        zf.write(path, "photos/" + path.name)
spec = json.dumps({"name": "first", "base_model": "tiny-flux", "dataset": {"trigger_word": "lfx"}})
doors = {
    "submit": lambda c: c.post("/api/jobs", data={"spec": spec}, files={"dataset": ("d.zip", archive.getvalue())},
                               headers=auth),
    "upload": lambda c: c.post("/api/uploads", files=[("files", ("d.zip", archive.getvalue()))], headers=auth),
    "quote": lambda c: c.post("/api/quote", json={"spec": spec}, headers=auth),
}
out = {}
with TestClient(app) as client:
    client.get("/api/jobs", headers=auth)  # the client's own first use
    for door, call in doors.items():
        before = set(sys.modules)
        answer = call(client)
        new = sorted(m for m in set(sys.modules) - before if m.split(".")[0] not in sys.stdlib_module_names)
        out[door] = {"status": answer.status_code, "imported": new}
out["torch"] = "torch" in sys.modules
print(json.dumps(out))
"""


def test_the_first_submission_upload_and_quote_import_nothing() -> None:
    """Each door's first request imports no module (the service imported and ran it all at start), and the
    service never imports torch to take, check or quote a job."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_REQUESTS, str(EXAMPLES / "sample_dataset")],
        capture_output=True, text=True, timeout=600, env=os.environ.copy(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["submit"]["status"] == 201 and out["upload"]["status"] == 201 and out["quote"]["status"] == 200, out
    for door in ("submit", "upload", "quote"):
        assert out[door]["imported"] == [], f"the first {door} imported {len(out[door]['imported'])} modules: {out}"
    assert out["torch"] is False, "torch was imported by the service's doors"
