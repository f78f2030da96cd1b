"""What the web UI tells a user when something is refused, in Debian's Chromium (Playwright, loopback only):
errors appear where the user pressed the button, with what they typed still in the form."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.e2e.test_web_ui import CHROMIUM, page, shot  # noqa: F401  (the browser fixture)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start `loraflow serve` on loopback (with extra arguments) and return its URL."""
    import httpx

    from loraflow.testing.vast_emulator import free_port

    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> str:
        port = free_port()
        log = open(tmp_path / f"server-{port}.log", "wb")  # noqa: SIM115
        argv = [sys.executable, "-m", "loraflow.cli", "serve", "--port", str(port), *args]
        environ = {**os.environ, "HF_HOME": str(tmp_path / "hf"), **(env or {})}  # no model cached, hub offline
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=environ))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/api/health").status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError((tmp_path / f"server-{port}.log").read_text())

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def upload(page, server: str, files: list[Path]) -> None:  # noqa: F811
    page.goto(f"{server}/new")
    page.set_input_files("#files", [str(p) for p in files])
    page.click("#upload")
    page.wait_for_selector("text=Dataset report")


def test_wizard_shows_start_errors_and_keeps_the_input(serve, page, tmp_path: Path) -> None:  # noqa: F811
    server = serve("--no-auth", "--workers", "0")
    images = sorted(EXAMPLES.joinpath("sample_dataset").iterdir())
    # A dataset that is not fit (two images, four are needed): the refusal is on the page, the input kept.
    upload(page, server, images[:4])
    page.fill("#name", "mine")
    page.fill("#trigger_word", "lfx")
    page.select_option("#base_model", "tiny-flux")
    with page.expect_response(lambda r: r.url.endswith("/start")) as answer:
        page.click("#start")
    assert answer.value.status == 422
    box = page.locator("#start-error")
    assert "dataset not fit to train" in box.inner_text().lower()
    assert "min_images" in box.inner_text() or "images" in box.inner_text()
    assert page.input_value("#trigger_word") == "lfx" and page.input_value("#name") == "mine"
    shot(page, "wizard-dataset-refused")
    # A fit dataset with steps = -7: the field is named, and every value typed is still there.
    upload(page, server, images)
    page.fill("#trigger_word", "lfx")
    page.select_option("#base_model", "tiny-flux")
    page.click("text=Advanced settings")
    page.fill("#adv-steps", "-7")
    page.fill("#adv-learning_rate", "0.0005")
    with page.expect_response(lambda r: r.url.endswith("/start")) as answer:
        page.click("#start")
    assert answer.value.status == 422
    text = page.locator("#start-error").inner_text()
    assert "training.steps" in text and "-7" in text
    assert page.input_value("#trigger_word") == "lfx"
    assert page.input_value("#adv-steps") == "-7" and page.input_value("#adv-learning_rate") == "0.0005"
    assert page.input_value("#base_model") == "tiny-flux"
    shot(page, "wizard-steps-refused")


def test_wizard_placeholders_are_the_chosen_models_defaults(serve, page) -> None:  # noqa: F811
    server = serve("--no-auth", "--workers", "0")
    upload(page, server, sorted(EXAMPLES.joinpath("sample_dataset").iterdir()))
    page.click("text=Advanced settings")
    page.select_option("#base_model", "tiny-flux")
    assert page.get_attribute("#adv-steps", "placeholder") == "30"
    assert page.get_attribute("#adv-resolution", "placeholder") == "[64]"
    page.select_option("#base_model", "flux-dev")
    assert page.get_attribute("#adv-steps", "placeholder") == "2000"
    assert page.get_attribute("#adv-resolution", "placeholder") == "[512, 768, 1024]"
    assert "PydanticUndefined" not in page.content()


def test_captioners_offered_only_where_they_run_with_progress_and_errors(serve, page, tmp_path: Path) -> None:  # noqa: F811
    from loraflow.testing.tiny_wd14 import build_tiny_wd14

    tagger = build_tiny_wd14(tmp_path / "wd14")
    server = serve("--no-auth", "--workers", "0", env={"LORAFLOW_CAPTIONER_MODELS": f"wd14={tagger}"})
    images = [p for p in sorted(EXAMPLES.joinpath("sample_dataset").iterdir()) if p.name != "mascot_01.txt"]
    upload(page, server, images)
    offered = page.locator("#captioner option").all_inner_texts()
    assert offered == ["template", "wd14"]  # florence2 has no model here and the hub is offline
    not_here = page.inner_text("#captioners-not-here")
    assert "florence2 (its model florence-community/Florence-2-large is not downloaded" in not_here
    # A captioner the server cannot run, posted anyway (an old page): the reason shows, nothing runs.
    page.evaluate("document.querySelector('#captioner').add(new Option('florence2'))")
    page.select_option("#captioner", "florence2")
    with page.expect_response(lambda r: r.url.endswith("/autocaption")) as answer:
        page.click("#autocaption")
    assert answer.value.status == 422
    assert "florence2 cannot caption on this server" in page.inner_text("#caption-status .error")
    # The tagger runs in the background; the page follows it and ends with the new caption in the grid.
    page.select_option("#captioner", "wd14")
    page.click("#autocaption")
    page.wait_for_selector("#caption-done", timeout=120_000)
    assert page.inner_text("#caption-done") == "wd14 captioned 1 image(s); 7 kept their own captions."
    assert "mascot" in page.input_value('textarea[data-image="mascot_01.jpg"]')
    shot(page, "wizard-captioned")


def test_a_captioner_that_fails_says_so_on_the_page(serve, page, tmp_path: Path) -> None:  # noqa: F811
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    (broken / "selected_tags.csv").write_text("tag_id,name,category,count\n")
    server = serve("--no-auth", "--workers", "0", env={"LORAFLOW_CAPTIONER_MODELS": f"wd14={broken}"})
    images = [p for p in sorted(EXAMPLES.joinpath("sample_dataset").iterdir()) if p.name != "mascot_01.txt"]
    upload(page, server, images)
    page.select_option("#captioner", "wd14")
    page.click("#autocaption")
    page.wait_for_selector("#caption-status .error", timeout=120_000)
    text = page.inner_text("#caption-status .error")
    assert "the wd14 captioner failed" in text and "no caption file was written" in text
    assert page.input_value('textarea[data-image="mascot_01.jpg"]') == ""
    shot(page, "wizard-caption-failed")


def cli_job() -> str:
    """A job as `loraflow train` records it (owner `local`), without running it."""
    from loraflow.jobs.store import Store
    from loraflow.spec import parse_spec

    raw = {"name": "from-cli", "dataset": {"path": str(EXAMPLES / "sample_dataset")}, "base_model": "tiny-flux"}
    return Store().create_job(parse_spec(raw)).id


def test_single_user_mode_shows_the_cli_jobs_and_errors_as_pages(serve, page) -> None:  # noqa: F811
    import httpx

    job_id = cli_job()
    server = serve("--no-auth", "--workers", "0")
    page.goto(f"{server}/")
    assert page.inner_text(f'[data-testid="state-{job_id}"]') == "pending"
    assert page.locator("text=Log out").count() == 0  # nobody to log out in single-user mode
    page.goto(f"{server}/jobs/{job_id}")
    assert page.inner_text("h2").startswith("from-cli")
    api = httpx.get(f"{server}/api/jobs").json()
    assert [j["id"] for j in api["jobs"]] == [job_id]
    assert httpx.get(f"{server}/api/jobs/{job_id}").json()["owner"] == "local"
    # A job that does not exist: a page that says so for the browser, problem JSON for programs.
    answer = page.goto(f"{server}/jobs/nope123")
    assert answer.status == 404 and "no job with id nope123" in page.inner_text("#error-page")
    assert '"title"' not in page.content()
    assert httpx.get(f"{server}/jobs/nope123").headers["content-type"] == "application/problem+json"
    shot(page, "error-page")
    # A button whose request is refused (here: stopping a job that is gone) says so in the banner.
    page.goto(f"{server}/jobs/{job_id}")
    assert page.locator("#flash").is_hidden()
    page.evaluate("htmx.ajax('POST', '/ui/jobs/gone0000/stop', {target: '#live'})")
    page.wait_for_selector("#flash:not([hidden])")
    assert page.inner_text("#flash") == "Not found: no job with id gone0000"


def test_another_users_job_is_an_html_page_in_the_browser(serve, page) -> None:  # noqa: F811
    from loraflow.jobs.store import Store
    from loraflow.server.tokens import create_token

    job_id = cli_job()
    token = create_token(Store(), "alice")
    server = serve("--workers", "0")
    page.goto(f"{server}/login")
    page.fill("#token", token)
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{server}/")
    answer = page.goto(f"{server}/jobs/{job_id}")
    assert answer.status == 403
    assert f"job {job_id} belongs to another user" in page.inner_text("#error-page")
    assert "{" not in page.inner_text("#error-page")
