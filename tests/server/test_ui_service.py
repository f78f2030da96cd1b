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
