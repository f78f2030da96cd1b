"""An edit model's pairs through the web wizard (issues 30 and 33), in Debian's Chromium (Playwright, loopback):
control images uploaded beside their targets, the grid showing each pair side by side (control, then target),
the report naming a target without its control and a control of another aspect, Remove taking a pair out with
its control and the report refreshed, and a FLUX.1 Kontext job started from the pairs trained on the
ai-toolkit stand-in with the pairs' samples in its bundle."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from tests.e2e.test_web_feedback import serve  # noqa: F401  (the server fixture)
from tests.e2e.test_web_ui import CHROMIUM, page, shot  # noqa: F401  (the browser fixture)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
COLORS = ["red", "green", "blue", "gold", "pink", "teal", "plum"]


def pair_set(root: Path) -> tuple[list[Path], list[Path]]:
    """Seven targets with instructions; c has no control and b's control is twice as wide as b."""
    targets, controls = [], []
    for i, stem in enumerate("abcdefg"):
        target = root / "targets" / f"{stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (320, 320), (30 * i, 200 - 25 * i, 90)).save(target)
        (root / "targets" / f"{stem}.txt").write_text(f"make the square {COLORS[i]}\n")
        targets += [target, target.with_suffix(".txt")]
        if stem != "c":
            control = root / "controls" / f"{stem}.png"
            control.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (640, 320) if stem == "b" else (320, 320), (10 * i, 10, 200 - 20 * i)).save(control)
            controls.append(control)
    return targets, controls


@pytest.mark.timeout(600)  # a whole (stand-in) job after the browser part, on a busy CI machine
def test_paired_upload_shows_pairs_side_by_side_and_trains_an_edit_model(serve, page, tmp_path: Path) -> None:  # noqa: F811
    engine = tmp_path / "engines" / "ai-toolkit"
    engine.mkdir(parents=True)
    (engine / "run.py").write_text("from loraflow.testing.aitoolkit_standin import main\nmain()\n")
    server = serve("--no-auth", "--workers", "0", env={"LORAFLOW_AITOOLKIT_DIR": str(engine)})
    targets, controls = pair_set(tmp_path / "photos")
    page.set_viewport_size({"width": 1200, "height": 900})
    page.goto(f"{server}/new")
    page.set_input_files("#files", [str(p) for p in targets])
    page.set_input_files("#controls", [str(p) for p in controls])
    page.click("#upload")
    page.wait_for_selector("#report")
    report = page.inner_text("#report")
    assert "c.png: target image has no control image" in report and "not fit to train" in report
    assert "control/b.png: control is 640x320 but its target is 320x320" in report
    # Each pair in one row: the control first, then the arrow, then its target.
    pair = page.locator('figure.pair[data-image="a.png"]')
    control, target = pair.locator("img.control").bounding_box(), pair.locator("img.target").bounding_box()
    assert control and target and control["x"] + control["width"] <= target["x"], (control, target)
    assert abs(control["y"] - target["y"]) < 5 and control["width"] > 60  # side by side, both visible
    assert page.get_attribute('figure[data-image="a.png"]', "data-controls") == "a.png"
    assert page.locator('figure[data-image="c.png"] .missing-control').is_visible()
    shot(page, "wizard-pairs")
    # Remove the two broken pairs: b's control goes with it, and the report is redone each time.
    for stem in ("c", "b"):
        with page.expect_response(lambda r: "/remove/" in r.url):
            page.click(f'figure[data-image="{stem}.png"] .remove-image')
        page.wait_for_function(f"() => !document.querySelector('figure[data-image=\"{stem}.png\"]')")
    page.wait_for_function("() => document.querySelector('#pair-count')?.textContent === '5 pairs'")
    assert "not fit to train" not in page.inner_text("#report")
    page.goto(page.url)  # the upload itself lost b's control: a fresh page pairs the five that are left
    assert page.locator("figure.pair").count() == 5 and page.locator("img.control").count() == 5
    # A FLUX.1 Kontext job from the pairs: the spec names the control folder, the job trains on them.
    page.fill("#name", "edits")
    page.select_option("#base_model", "flux-kontext-dev")
    page.select_option("#engine", "ai-toolkit")
    page.select_option("#where", "local")
    page.fill("#sample_prompts", "make the square red")
    page.click("text=Advanced settings")
    page.fill("#adv-steps", "10")
    page.fill("#adv-resolution", "[256]")
    page.click("#start")
    page.wait_for_url("**/jobs/*")
    store = Store()
    job = store.get(page.url.rsplit("/", 1)[1])
    assert job.spec["dataset"]["control"] == "control"
    deadline = time.monotonic() + 420
    while store.get(job.id).state in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.5)
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, job.error
    with zipfile.ZipFile(job.outputs.bundle) as zf:
        names = set(zf.namelist())
        prompts = json.loads(zf.read("samples/prompts.json"))
    assert "samples/controls/0_0.png" in names  # the sample was made from a pair's control
    assert prompts and prompts[-1]["controls"] == ["controls/0_0.png"]
