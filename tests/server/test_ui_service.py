"""The service's own pages beyond the wizard: the API reference served offline, and the spec form a
person reads in the docs answering as documented."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from loraflow.server import ui
from loraflow.server.app import ServiceConfig, create_app
from loraflow.server.charts import loss_chart
from loraflow.server.routes import ui as pages


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(config=ServiceConfig(no_auth=True), sweep_every_s=None)
    ui.install(app)
    with TestClient(app) as c:
        c.headers["X-CSRF-Token"] = re.search(r'"X-CSRF-Token": "([^"]+)"', c.get("/").text).group(1)
        yield c


def test_docs_use_only_assets_shipped_with_loraflow(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: ?'([^']+)'", page.text)
    assert refs, page.text
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), f"{ref} is not served by loraflow"
        assert client.get(ref).status_code == 200, ref
    assert "cdn" not in page.text.lower()
    assert client.get("/static/app.css").status_code == 200  # the UI's own assets are still there


def test_an_engine_that_is_not_installed_is_a_message_on_the_wizard(client: TestClient) -> None:
    """A web user cannot run the operator's install command: the page says what they can do instead."""
    from tests.conftest import EXAMPLES

    files = [("files", (p.name, p.read_bytes())) for p in sorted((EXAMPLES / "sample_dataset").iterdir())]
    upload = client.post("/ui/uploads", files=files, follow_redirects=False).headers["location"]
    form = {"name": "three-lines", "trigger_word": "ohwx", "base_model": "flux-dev", "where": "local"}
    page = client.post(f"{upload}/start", data=form, headers={"accept": "text/html"})
    assert page.status_code == 422 and "Traceback" not in page.text
    assert "this server has no ai-toolkit installed" in page.text and "choose another engine" in page.text
    assert "loraflow engines install" not in page.text  # the operator's command, not the user's
    assert 'value="ohwx"' in page.text and 'value="three-lines"' in page.text


def test_the_queue_page_shows_places_and_hides_other_users_jobs() -> None:
    from loraflow.jobs.store import Store
    from loraflow.server.tokens import create_token
    from loraflow.spec import parse_spec
    from tests.conftest import EXAMPLES

    store = Store()
    spec = {"dataset": {"path": str(EXAMPLES / "sample_dataset")}, "base_model": "tiny-flux"}
    mine = store.create_job(parse_spec({**spec, "name": "mine"}), owner="alice")
    store.create_job(parse_spec({**spec, "name": "theirs"}), owner="bob")
    app = create_app(config=ServiceConfig(), sweep_every_s=None)
    ui.install(app)
    from tests.server.test_abuse_web import log_in

    with TestClient(app) as c:
        log_in(c, create_token(store, "alice"))
        page = c.get("/queue")
        assert page.status_code == 200
        assert f'href="/jobs/{mine.id}">mine<' in page.text and "theirs" not in page.text
        assert "another user&#39;s job" in page.text or "another user's job" in page.text
    with TestClient(app) as c:
        log_in(c, create_token(store, "root", admin=True))
        admin = c.get("/queue").text
        assert "theirs" in admin and "<td>bob</td>" in admin and "<td>alice</td>" in admin


def test_the_loss_chart_has_labelled_axes() -> None:
    svg = loss_chart([(10, 0.9), (20, 0.5), (30, 0.4), (40, 0.35)])
    assert svg.count('class="axis"') == 2
    assert ">step</text>" in svg and ">loss</text>" in svg
    assert ">10</text>" in svg and ">40</text>" in svg  # x ticks: the first and last step
    assert ">0.35</text>" in svg and ">0.9</text>" in svg  # y ticks: the lowest and highest loss


def test_samples_are_labelled_with_step_and_prompt(tmp_path) -> None:
    import json

    from PIL import Image

    from loraflow.publish.bundle import GRID_CELL, GRID_LEFT, GRID_TOP, collect_samples, sample_grid

    items = []
    for step in (10, 20):
        folder = tmp_path / f"step-{step:06d}"
        folder.mkdir()
        for n, prompt in enumerate(["a photo of lfx on the moon", "lfx in a garden"]):
            Image.new("RGB", (64, 64), "red").save(folder / f"{n:02d}.png")
            items.append({"file": f"{folder.name}/{n:02d}.png", "prompt": prompt, "step": step})
        (folder / "index.json").write_text(json.dumps([i for i in items if i["step"] == step]))
    assert {i["prompt"] for i in pages._sample_index(tmp_path)} == {"a photo of lfx on the moon", "lfx in a garden"}
    import io

    grid = Image.open(io.BytesIO(sample_grid(tmp_path, collect_samples(tmp_path)) or b""))
    assert grid.size == (GRID_LEFT + 2 * GRID_CELL, GRID_TOP + 2 * GRID_CELL)
    header = grid.crop((GRID_LEFT, 0, grid.width, GRID_TOP)).convert("L")
    labels = grid.crop((0, GRID_TOP, GRID_LEFT, grid.height)).convert("L")
    assert header.getextrema()[0] < 100 and labels.getextrema()[0] < 100  # text is drawn in both bands


def test_the_documented_curl_example_creates_a_job(tmp_path) -> None:
    """docs/service.md's worked example, run as written (token, spec heredoc, curl) against `loraflow serve`."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import time
    import zipfile

    import httpx

    from loraflow.jobs.store import Store
    from loraflow.server.tokens import create_token
    from loraflow.testing.vast_emulator import free_port
    from tests.conftest import EXAMPLES, REPO

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    block = (REPO / "docs" / "service.md").read_text().split("## Worked example: the API from a program")[1]
    lines = block.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("cat > spec.yaml"))
    end = next(i for i, line in enumerate(lines) if "/api/jobs " in line)
    script = "\n".join(lines[start : end + 1])
    assert '-F "spec=<spec.yaml"' in script
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as zf:
        for p in (EXAMPLES / "sample_dataset").iterdir():
            zf.write(p, p.name)
    port = free_port()
    env = {**os.environ, "TOKEN": create_token(Store(), "bot")}
    server = subprocess.Popen(
        [sys.executable, "-m", "loraflow.cli", "serve", "--port", str(port), "--workers", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        script = script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.terminate()
        server.wait(10)
    job = json.loads(done.stdout)
    assert job["name"] == "mascot" and job["state"] == "pending" and job["owner"] == "bot", done.stdout


def test_the_api_names_every_spec_problem_past_an_unknown_base_model(client: TestClient) -> None:
    from tests.conftest import EXAMPLES

    spec = "name: x\nbase_model: flux-dve\ntraining: {steps: -7}\nnetwork: {rnak: 4}\n"
    files = [("files", (p.name, p.read_bytes())) for p in sorted((EXAMPLES / "sample_dataset").iterdir())]
    answer = client.post("/api/jobs", data={"spec": spec}, files=files)
    assert answer.status_code == 422
    errors = answer.json()["errors"]
    assert errors[0] == "base_model: unknown base model 'flux-dve' Fix: did you mean 'flux-dev'?"
    assert any(e.startswith("training.steps:") for e in errors)
    assert "network.rnak: unknown key. Did you mean 'rank'?" in errors


def test_a_completed_jobs_page_offers_the_bundle_its_outputs_name(client: TestClient, tmp_path) -> None:
    from loraflow.jobs.store import Store
    from loraflow.spec import parse_spec

    store = Store()
    job = store.create_job(parse_spec({"name": "j", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux"}))
    for state in ("preparing", "provisioning", "training", "finishing"):
        store.transition(job.id, state)
    page = client.get(f"/jobs/{job.id}")
    assert page.status_code == 200 and 'id="download"' not in page.text
    bundle = tmp_path / "loraflow-j.zip"
    bundle.write_bytes(b"PK\x05\x06" + bytes(18))
    store.update_outputs(job.id, bundle=str(bundle))
    store.transition(job.id, "completed")
    assert f'href="/ui/jobs/{job.id}/bundle"' in client.get(f"/jobs/{job.id}").text
    assert client.get(f"/ui/jobs/{job.id}/bundle").content == bundle.read_bytes()
