"""What the web UI tells a user when something is refused, in Debian's Chromium (Playwright, loopback only):
errors appear where the user pressed the button, with what they typed still in the form."""

from __future__ import annotations

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

    def start(*args: str) -> str:
        port = free_port()
        log = open(tmp_path / f"server-{port}.log", "wb")  # noqa: SIM115
        argv = [sys.executable, "-m", "loraflow.cli", "serve", "--port", str(port), *args]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log))
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
