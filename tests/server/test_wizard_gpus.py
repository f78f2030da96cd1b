"""The web wizard offers compute.gpus (issue 31): the choice reaches the job's spec through the one submit
door, is kept in the form when Start is refused, and this machine refuses more GPUs than it has."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from loraflow.errors import UserInputError
from loraflow.running.submit import check_local_gpus
from loraflow.server import ui
from loraflow.server.app import ServiceConfig, create_app
from loraflow.spec import parse_spec
from tests.conftest import EXAMPLES


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(config=ServiceConfig(no_auth=True), sweep_every_s=None)
    ui.install(app)
    with TestClient(app) as c:
        c.headers["X-CSRF-Token"] = re.search(r'"X-CSRF-Token": "([^"]+)"', c.get("/").text).group(1)  # as htmx
        yield c


def upload(client: TestClient) -> str:
    files = [("files", (p.name, p.read_bytes())) for p in sorted((EXAMPLES / "sample_dataset").iterdir())]
    return client.post("/ui/uploads", files=files, follow_redirects=False).headers["location"]


def capture_submissions(monkeypatch: pytest.MonkeyPatch) -> list:
    """The one submit door replaced: it keeps the spec the form made, then refuses (nothing is trained)."""
    seen: list = []

    def refuse(store, spec, *args, **kw):
        seen.append(spec)
        raise UserInputError("no room today", fix="try later")

    monkeypatch.setattr("loraflow.running.submit.submit", refuse)
    return seen


def test_the_gpu_choice_reaches_the_spec(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    where = upload(client)
    page = client.get(where)
    assert '<select id="gpus" name="gpus"' in page.text and "<option>8</option>" in page.text
    seen = capture_submissions(monkeypatch)
    form = {"name": "duo", "trigger_word": "ohwx", "base_model": "tiny-flux", "gpus": "2"}
    page = client.post(f"{where}/start", data=form, headers={"accept": "text/html"})
    assert page.status_code == 422 and seen and seen[0].compute.gpus == 2
    assert "<option selected>2</option>" in page.text  # the choice is kept on the refused form


def test_one_gpu_is_the_default_and_the_spec_stays_minimal(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = capture_submissions(monkeypatch)
    form = {"name": "solo", "trigger_word": "ohwx", "base_model": "tiny-flux"}
    assert client.post(f"{upload(client)}/start", data=form).status_code == 422
    assert seen[0].compute.gpus == 1 and "compute" not in seen[0].model_dump(exclude_defaults=True)


def test_this_machine_refuses_more_gpus_than_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_spec({"name": "x", "dataset": {"path": str(EXAMPLES / "sample_dataset")}, "base_model": "tiny-flux",
                       "compute": {"gpus": 2}})
    monkeypatch.setattr("loraflow.nvidia_smi.gpu_stats", lambda: [{"name": "NVIDIA H100"}])
    with pytest.raises(UserInputError) as err:
        check_local_gpus(spec)
    assert "compute.gpus is 2 but this machine has 1 GPU" in err.value.render()
    monkeypatch.setattr("loraflow.nvidia_smi.gpu_stats", lambda: None)  # no GPU: CPU processes (the tiny model)
    check_local_gpus(spec)
