"""The web UI in Debian's Chromium driven by Playwright (headless, loopback only): upload, edit a
caption, train, watch it live, refresh, stop, resume, download. Screenshots are kept as artifacts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraflow.jobs.store import Store
from loraflow.server.tokens import create_token
from tests.conftest import EXAMPLES, REPO

CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "test-artifacts" / "screenshots"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture
def server(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from loraflow.testing.vast_emulator import free_port

    os.environ["LORAFLOW_MODELS_DIR"] = str(tmp_path_factory.getbasetemp() / "shared-models")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loraflow.cli", "serve", "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(200):
        try:
            if httpx.get(f"{url}/api/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        os.environ.pop("LORAFLOW_MODELS_DIR", None)


@pytest.fixture
def page() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        context = browser.new_context(accept_downloads=True)
        yield context.new_page()
        browser.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.mark.timeout(600)  # a whole job: train, stop, resume, the result check, download (a busy CI machine)
def test_upload_caption_train_refresh_stop_resume_download(server: str, page, tmp_path: Path) -> None:
    token = create_token(Store(), "alice")
    page.goto(f"{server}/")
    assert page.url.endswith("/login")
    page.fill("#token", "lft_wrong")
    page.click("button:has-text('Log in')")
    assert page.locator(".error").inner_text() == "That token is not valid."
    page.fill("#token", token)
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{server}/")
    shot(page, "jobs-empty")
    # Upload the sample images, one without its caption, to caption in the grid.
    upload = tmp_path / "upload"
    shutil.copytree(EXAMPLES / "sample_dataset", upload)
    missing = sorted(upload.glob("*.txt"))[0]
    missing.unlink()
    page.goto(f"{server}/new")
    page.set_input_files("#files", [str(p) for p in sorted(upload.iterdir())])
    page.click("#upload")
    page.wait_for_selector("text=Dataset report")
    box = page.locator(f'textarea[data-image="{missing.with_suffix(".jpg").name}"]')
    if box.count() == 0:
        box = page.locator("textarea").first
    with page.expect_response(lambda r: "/caption/" in r.url):
        box.fill("lfx, a small red robot, hand edited")
        box.dispatch_event("change")
    shot(page, "wizard")
    page.fill("#name", "webjob")
    page.fill("#trigger_word", "lfx")
    page.select_option("#base_model", "tiny-flux")
    page.click("text=Advanced settings")
    page.fill("#adv-steps", "300")
    page.click("button:has-text('Estimate')")
    page.wait_for_selector("#estimate-text")
    page.click("#start")
    page.wait_for_url("**/jobs/*")
    job_url = page.url
    job_id = job_url.rsplit("/", 1)[1]
    # The page updates by itself while training runs.
    page.wait_for_function("() => parseInt(document.querySelector('#job-step').textContent) > 0", timeout=180_000)
    first = int(page.inner_text("#job-step"))
    page.wait_for_function(f"() => parseInt(document.querySelector('#job-step').textContent) > {first}")
    shot(page, "job-training")
    page.reload()  # a refresh mid-training shows the same job, still moving
    assert page.inner_text("#job-state") in ("training", "preparing", "provisioning")
    seen = int(page.inner_text("#job-step"))
    page.wait_for_function(f"() => parseInt(document.querySelector('#job-step').textContent) > {seen}")
    page.click("button:has-text('Stop')")
    page.wait_for_function("() => document.querySelector('#job-state').textContent === 'stopped'", timeout=120_000)
    stopped_at = int(page.inner_text("#job-step"))
    shot(page, "job-stopped")
    before_resume = Store().events(job_id, latest=True)[0].seq
    page.click("button:has-text('Resume')")
    page.wait_for_function("() => document.querySelector('#job-state').textContent === 'completed'", timeout=300_000)
    # On a busy machine the click can land after the last step (stopped at 300): then there is nothing to redo.
    # Whenever there is, the resumed run goes on from the stop's checkpoint, never from step 0.
    assert int(page.inner_text("#job-step")) == 300 >= stopped_at > 0
    resumed = [e.data["step"] for e in Store().events(job_id, after_seq=before_resume, types=["progress"])]
    assert all(step > stopped_at for step in resumed), (stopped_at, resumed[:5])
    assert resumed or stopped_at == 300
    page.wait_for_selector("#loss-chart")
    # The result check's scorecard: a table row per scored checkpoint, the chart, the best one preselected.
    page.wait_for_selector("#scorecard-table")
    rows = page.locator("#scorecard-table tbody tr")
    assert rows.count() >= 2 and page.locator("#scorecard-table tr.best").count() == 1
    assert page.locator("#scorecard-chart").evaluate("img => img.complete && img.naturalWidth > 0")
    best = Store().get(job_id).outputs.scorecard["best"]
    assert f"Best: step {best['step']}" in page.inner_text("#best-why")
    if best["checkpoint_step"] is not None:
        assert page.locator("select[name=step]").input_value() == str(best["checkpoint_step"])
        assert "the scorecard's best" in page.inner_text("#checkpoint-why")
    shot(page, "job-completed")
    with page.expect_download() as info:
        page.click("#download")
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    import zipfile

    with zipfile.ZipFile(saved) as zf:
        assert "webjob.safetensors" in zf.namelist()
        dataset_caption = (Store().get(job_id).folder / "dataset").rglob(missing.name)
    assert any("hand edited" in p.read_text() for p in dataset_caption)
    page.goto(f"{server}/")
    assert page.inner_text(f'[data-testid="state-{job_id}"]') == "completed"
    shot(page, "jobs-list")
