"""The service's own pages beyond the wizard: the API reference served offline, and the spec form a
person reads in the docs answering as documented."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from loraflow.server import ui
from loraflow.server.app import ServiceConfig, create_app


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(config=ServiceConfig(no_auth=True), sweep_every_s=None)
    ui.install(app)
    with TestClient(app) as c:
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


def test_an_engine_that_is_not_installed_is_a_message_on_the_wizard(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any UserInputError the submit door raises (here: the engine preflight's) is shown with its fix."""
    import importlib.util

    from loraflow.errors import UserInputError
    from tests.conftest import EXAMPLES

    def missing_engine(*args: object, **kw: object) -> None:
        raise UserInputError("ai-toolkit is not installed here", fix="run `loraflow engines install ai-toolkit`")

    monkeypatch.setattr("loraflow.server.app.submit_job", missing_engine)
    if importlib.util.find_spec("loraflow.jobs.submit"):  # where the submit door lives once it has moved
        monkeypatch.setattr("loraflow.jobs.submit.submit_job", missing_engine, raising=False)
    files = [("files", (p.name, p.read_bytes())) for p in sorted((EXAMPLES / "sample_dataset").iterdir())]
    upload = client.post("/ui/uploads", files=files, follow_redirects=False).headers["location"]
    form = {"name": "three-lines", "trigger_word": "ohwx", "base_model": "flux-dev"}
    page = client.post(f"{upload}/start", data=form, headers={"accept": "text/html"})
    assert page.status_code == 422 and "Traceback" not in page.text
    assert "ai-toolkit is not installed here Fix: run `loraflow engines install ai-toolkit`" in page.text
    assert 'value="ohwx"' in page.text and 'value="three-lines"' in page.text
