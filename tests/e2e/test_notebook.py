"""The Vast.ai notebook run top to bottom on the CPU (builtin tiny engine, bundled dataset), twice:
interrupted, then re-run to resume instead of starting over. No secret may reach an output."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.conftest import EXAMPLES, REPO

NOTEBOOK = REPO / "notebooks" / "flux_lora_vastai.ipynb"
CANARY = "hf_" + "canaryTOKEN" + "shouldNEVERbePRINTED1234"  # built so no literal looks like a token


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            assert "print(os.environ" not in cell.source and 'HF_TOKEN"]' not in cell.source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1


def run(tmp_path: Path, overrides: str) -> tuple[nbformat.NotebookNode, Exception | None]:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))  # as papermill injects parameters
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
        return nb, None
    except CellExecutionError as exc:
        return nb, exc


def outputs(nb: nbformat.NotebookNode) -> str:
    return json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])


def test_notebook_cpu_run_interrupted_then_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", CANARY)
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path / "models"))
    overrides = (
        "settings.name = 'nb-demo'\n"
        f"settings.dataset = {str(EXAMPLES / 'sample_dataset')!r}\n"
        "settings.base_model = 'tiny-flux'\nsettings.engine = 'builtin'\nsettings.steps = 40\n"
        "settings.resolution = [64]\nsettings.sample_every = 0\nsettings.checkpoint_every = 10\n"
        "settings.caption_backend = 'template'\nsettings.max_usd = 1.0\nsettings.price_usd_per_hour = 0.5\n"
        "settings.extra = {'dataset': {'checks': {'min_resolution': 64}}}\n"
        f"settings.output_root = {str(tmp_path / 'out')!r}\n"
        "ASK_FOR_TOKENS = False\nREQUIRE_GPU = False\n"
    )
    first, error = run(tmp_path, overrides + "STOP_AFTER_STEP = 15\n")
    assert error is not None and "training is stopped" in str(error)  # the run was interrupted at the train cell
    assert "Traceback" not in str(error) and "Fix: re-run the Train cell" in str(error)  # message and fix only
    text = outputs(first)
    assert "job.state" in text and "stopped at step 15/40" in text  # exactly where STOP_AFTER_STEP said
    assert "started a new job" in text and "on CPU" in text and "'hours'" not in text  # a sentence, not a dict
    assert "HF_TOKEN" in text and CANARY not in text  # secrets show as set / not set, never their value

    second, error = run(tmp_path, overrides + "STOP_AFTER_STEP = None\n")
    assert error is None, error
    text = outputs(second)
    assert "resuming job" in text and "same settings" in text
    import re

    resumed_at = int(re.search(r"resumed: \{'step': (\d+)", text).group(1))
    assert resumed_at == 15  # continued from the interruption's checkpoint, not from step 0
    assert "completed at step 40/40" in text
    assert "lora_header_readable': True" in text and "bundle:" in text
    assert CANARY not in text
    from loraflow.jobs.store import Store

    monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / "out"))
    jobs = Store().list_jobs()
    assert len(jobs) == 1 and jobs[0].step == 40  # the same job continued; nothing started over
    assert len(Store().events(jobs[0].id, types=["train.launched"])) == 2
    first_job = jobs[0].id

    # Run All again with more steps: not the finished 40-step job, a new one, and the cell says so.
    third, error = run(tmp_path, overrides.replace("steps = 40", "steps = 20") + "STOP_AFTER_STEP = None\n")
    assert error is None, error
    text = outputs(third)
    assert f"settings changed since job {first_job} (training.steps: 40 -> 20)" in text
    assert "completed at step 20/20" in text
    newest = Store().list_jobs()[0]
    assert newest.id != first_job and newest.step == 20 and newest.id in text


def test_dataset_from_a_url_is_downloaded_once(tmp_path: Path) -> None:
    import threading
    import zipfile
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from loraflow import notebook as nb

    served = tmp_path / "srv"
    served.mkdir()
    with zipfile.ZipFile(served / "photos.zip", "w") as zf:
        for p in (EXAMPLES / "sample_dataset").iterdir():
            zf.write(p, f"photos/{p.name}")
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/photos.zip"
        settings = nb.Settings(dataset=url, output_root=str(tmp_path / "out"), base_model="tiny-flux", engine="builtin")
        path = nb.fetch_dataset(settings)
        assert path.endswith("-photos.zip") and settings.dataset == path
        (served / "photos.zip").unlink()  # a second call needs no network
        again = nb.Settings(dataset=url, output_root=str(tmp_path / "out"))
        assert nb.fetch_dataset(again) == path
        missing = nb.Settings(dataset=url.replace("photos", "nope"), output_root=str(tmp_path / "out"))
        with pytest.raises(nb.NotebookStop, match=r"could not download the dataset from 127\.0\.0\.1"):
            nb.fetch_dataset(missing)
    finally:
        server.shutdown()
