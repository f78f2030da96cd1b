"""The new-job wizard through every choice a user of ai-toolkit's UI or FluxGym expects (issue 33), in
Debian's Chromium (Playwright, loopback only): odd file names, removing and re-captioning an image with the
report refreshed each time, engine, where to train, VRAM preset, rank/alpha, captioner, sample prompts,
budget, and a refused Start whose message is on screen without scrolling."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loraflow.jobs.store import Store
from tests.conftest import EXAMPLES
from tests.e2e.test_web_feedback import serve  # noqa: F401  (the server fixture)
from tests.e2e.test_web_ui import CHROMIUM, page, shot  # noqa: F401  (the browser fixture)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def usable(page) -> int:  # noqa: F811
    return int(page.inner_text("#report p").split()[0])


def test_wizard_offers_every_choice_and_keeps_the_report_fresh(serve, page, tmp_path: Path) -> None:  # noqa: F811
    server = serve("--no-auth", "--workers", "0")
    folder = tmp_path / "photos"
    shutil.copytree(EXAMPLES / "sample_dataset", folder)
    # A phone's copy name used to reject the whole batch; it is renamed with its caption instead.
    (folder / "mascot_00.jpg").rename(folder / "IMG_4001 (copy).jpg")
    (folder / "mascot_00.txt").rename(folder / "IMG_4001 (copy).txt")
    page.set_viewport_size({"width": 1200, "height": 800})
    page.goto(f"{server}/new")
    page.set_input_files("#files", [str(p) for p in sorted(folder.iterdir())])
    page.click("#upload")
    page.wait_for_selector("#report")
    renamed = page.locator('figure[data-image="IMG_4001_copy_.jpg"] textarea').input_value()
    assert renamed.startswith("[trigger], a red round mascot")  # its caption came along
    before = usable(page)
    assert before == 8
    # Remove one image: its tile goes and the report counts one fewer, without a reload.
    with page.expect_response(lambda r: "/remove/" in r.url):
        page.click('figure[data-image="mascot_07.jpg"] .remove-image')
    page.wait_for_function("() => !document.querySelector('figure[data-image=\"mascot_07.jpg\"]')")
    page.wait_for_function(f"() => parseInt(document.querySelector('#report p').textContent) === {before - 1}")
    # Re-caption one image with the template captioner: its caption is replaced, the grid and report redone.
    page.select_option("#captioner", "template")
    page.click('figure[data-image="mascot_01.jpg"] .recaption-image')
    page.wait_for_selector("#caption-done")
    # The grid arrives as an out-of-band swap beside the status line: wait for the tile itself, not the line.
    page.wait_for_function(
        "() => document.querySelector('figure[data-image=\"mascot_01.jpg\"] textarea').value"
        " === 'a photo of [trigger]'",
        timeout=30_000,
    )
    assert page.locator('figure[data-image="mascot_01.jpg"] textarea').input_value() == "a photo of [trigger]"
    shot(page, "wizard-choices-dataset")
    # A refused Start (rank 0) is shown at the top of the page the user lands on, inside the window.
    page.fill("#name", "choices")
    page.fill("#trigger_word", "lfx")
    page.select_option("#base_model", "tiny-flux")
    page.fill('[name="network.rank"]', "0")
    with page.expect_response(lambda r: r.url.endswith("/start")) as answer:
        page.click("#start")
    assert answer.value.status == 422
    box = page.locator("#start-error").bounding_box()
    assert box is not None and 0 <= box["y"] < 800, box  # visible without scrolling
    assert "network.rank" in page.inner_text("#start-error")
    assert page.input_value('[name="network.rank"]') == "0"  # kept as typed
    shot(page, "wizard-choices-refused")
    # Every choice, then a Start that is accepted.
    engines = page.locator("#engine option").all_inner_texts()
    assert any(e.startswith("builtin") for e in engines)
    page.select_option("#engine", "builtin")
    page.select_option("#where", "local")
    page.select_option("#vram_preset", "48")
    page.fill('[name="network.rank"]', "8")
    page.fill('[name="network.alpha"]', "4")
    page.select_option("#caption_backend", "template")
    page.fill("#sample_prompts", "[trigger] on the moon\n[trigger] in a forest")
    page.fill("#budget_usd", "5")
    page.click("text=Advanced settings")
    page.fill("#adv-steps", "6")
    page.click("button:has-text('Estimate')")
    page.wait_for_selector("#estimate-text")
    page.click("#start")
    page.wait_for_url("**/jobs/*")
    spec = Store().get(page.url.rsplit("/", 1)[1]).spec
    assert spec["engine"]["name"] == "builtin" and spec["compute"]["provider"] == "local"
    assert spec["training"]["vram_preset"] == 48 and spec["training"]["steps"] == 6
    assert spec["network"]["rank"] == 8 and spec["network"]["alpha"] == 4
    assert spec["dataset"]["captions"]["backend"] == "template"
    assert spec["sampling"]["prompts"] == ["[trigger] on the moon", "[trigger] in a forest"]
    assert spec["budget"]["max_usd"] == 5


def test_choosing_a_model_offers_only_its_engines_and_its_defaults(serve, page) -> None:  # noqa: F811
    server = serve("--no-auth", "--workers", "0")
    page.goto(f"{server}/new")
    page.set_input_files("#files", [str(p) for p in sorted(EXAMPLES.joinpath("sample_dataset").iterdir())])
    page.click("#upload")
    page.wait_for_selector("#report")
    page.select_option("#base_model", "tiny-flux")
    assert [o.split(" ")[0] for o in page.locator("#engine option").all_inner_texts()[1:]] == ["builtin"]
    assert page.get_attribute('[name="network.rank"]', "placeholder") == "4"
    page.select_option("#base_model", "flux-dev")
    names = [o.split(" ")[0] for o in page.locator("#engine option").all_inner_texts()[1:]]
    assert "ai-toolkit" in names and "kohya" in names and "fal" not in names  # fal: not granted here
    assert page.get_attribute('[name="network.rank"]', "placeholder") == "16"


def test_files_dropped_on_the_drop_zone_are_uploaded(serve, page) -> None:  # noqa: F811
    import base64

    server = serve("--no-auth", "--workers", "0")
    page.goto(f"{server}/new")
    files = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()}
             for p in sorted(EXAMPLES.joinpath("sample_dataset").iterdir())]  # fmt: skip
    page.evaluate(
        """files => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.data), c => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name));
            }
            document.getElementById("dropzone").dispatchEvent(
                new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        files,
    )
    page.wait_for_selector("#report")
    assert usable(page) == 8
