"""The web UI's origin under abuse (issue 29): security headers, job files that never render as pages,
CSRF on cookie posts, sessions tied to their token, `Bearer ` required, `Secure` behind TLS."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from loraflow.jobs.models import TokenRow
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.server import ui
from loraflow.server.app import ServiceConfig, create_app
from loraflow.server.tokens import create_token, list_tokens, revoke
from loraflow.spec import parse_spec
from loraflow.testing.live_server import live_server

SPEC = {"name": "web", "dataset": {"path": ".", "trigger_word": "lfx"}, "base_model": "tiny-flux"}


def make_app(store: Store) -> object:
    app = create_app(store, ServiceConfig.from_env(), sweep_every_s=None)
    ui.install(app)
    return app


@pytest.fixture
def web() -> Iterator[tuple[TestClient, Store, dict[str, str]]]:
    store = Store()
    tokens = {u: create_token(store, u) for u in ("alice", "bob")}
    with TestClient(make_app(store), raise_server_exceptions=False) as client:
        yield client, store, tokens


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    return found.group(1) if found else ""


def log_in(client: TestClient, token: str) -> str:
    page = client.get("/login")
    answer = client.post("/login", data={"token": token, "csrf": csrf_of(page.text)}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return client.cookies["loraflow_session"]


def job_of(store: Store, owner: str, state: JobState) -> str:
    job = store.create_job(parse_spec(SPEC, "spec"), owner=owner)
    store.update(job.id, state=state.value)
    return job.id


def test_every_answer_carries_the_security_headers(web) -> None:
    client, _store, tokens = web
    for path in ("/login", "/api/health", "/api/jobs", "/static/app.js", "/docs", "/openapi.json"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "same-origin", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
    assert "script-src 'self';" in client.get("/login").headers["content-security-policy"]  # no inline script
    log_in(client, tokens["alice"])
    assert "'unsafe-inline'" not in client.get("/new").headers["content-security-policy"].split("style-src")[0]


def test_a_job_file_is_an_attachment_never_a_page(web) -> None:
    """Before: `caption_extension: html` and a scripted caption were served as text/html on the UI's origin."""
    client, store, tokens = web
    spec = "name: x\nbase_model: tiny-flux\ndataset: {caption_extension: html}\n"
    refused = client.post("/api/quote", headers={"Authorization": f"Bearer {tokens['alice']}"}, json={"spec": spec})
    assert refused.status_code == 422 and any("dataset.caption_extension" in e for e in refused.json()["errors"])
    job_id = job_of(store, "alice", JobState.COMPLETED)
    folder = store.get(job_id).folder / "dataset"
    folder.mkdir(parents=True)
    (folder / "x.html").write_text("<script>fetch('/api/jobs')</script>", encoding="utf-8")
    (folder / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    api = client.get(f"/api/jobs/{job_id}/files/dataset/x.html", headers={"Authorization": f"Bearer {tokens['alice']}"})
    log_in(client, tokens["alice"])
    page = client.get(f"/ui/jobs/{job_id}/files/dataset/x.html")
    for answer in (api, page):
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/octet-stream"
        assert answer.headers["content-disposition"].startswith("attachment")
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in answer.headers["content-security-policy"]
    image = client.get(f"/ui/jobs/{job_id}/files/dataset/x.png")
    assert image.headers["content-type"] == "image/png" and "sandbox" in image.headers["content-security-policy"]


def test_a_cookie_post_from_another_site_is_refused(web) -> None:
    """Before: a page on the same site auto-posted /ui/jobs/{id}/stop and it was obeyed."""
    client, store, tokens = web
    log_in(client, tokens["alice"])
    job_id = job_of(store, "alice", JobState.COMPLETED)  # a stop that gets through answers 409
    token = page_token(client.get("/").text)
    url = f"/ui/jobs/{job_id}/stop"
    assert client.post(url).status_code == 403  # no token
    assert client.post(url, data={"csrf": "0" * 40}).status_code == 403  # a wrong one
    forged = {"X-CSRF-Token": token, "Origin": "http://evil.example"}
    assert client.post(url, headers=forged).status_code == 403
    assert client.post(url, headers={"X-CSRF-Token": token, "Sec-Fetch-Site": "same-site"}).status_code == 403
    same = {"X-CSRF-Token": token, "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.post(url, headers={**same, "hx-request": "true"}).status_code == 409  # obeyed: nothing to stop
    assert client.post(url, data={"csrf": token}, headers={"hx-request": "true"}).status_code == 409


def test_a_session_ends_with_its_token_expires_and_is_never_an_api_token(web) -> None:
    """Before: after `tokens revoke` the cookie still worked, as a Bearer token too, with no expiry."""
    client, store, tokens = web
    session = log_in(client, tokens["alice"])
    assert client.get("/ui/jobs/rows").status_code == 200
    assert client.get("/api/jobs", headers={"Authorization": f"Bearer {session}"}).status_code == 401
    relogin = client.post("/login", data={"token": session, "csrf": csrf_of(client.get("/login").text)})
    assert "That token is not valid." in relogin.text  # a session does not mint sessions
    parent = next(t["id"] for t in list_tokens(store) if t["user"] == "alice" and not t["label"])
    revoke(store, parent)
    assert client.get("/ui/jobs/rows").status_code == 401
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"

    session = log_in(client, tokens["bob"])
    assert client.get("/ui/jobs/rows").status_code == 200
    with store.session() as s, s.begin():  # made eight days ago: past LORAFLOW_SESSION_HOURS (168)
        from datetime import UTC, datetime, timedelta

        s.execute(update(TokenRow).where(TokenRow.user == "bob", TokenRow.label != "")
                  .values(created_at=datetime.now(UTC) - timedelta(days=8)))  # fmt: skip
    assert client.get("/ui/jobs/rows").status_code == 401


def test_an_api_token_needs_the_bearer_scheme(web) -> None:
    client, _store, tokens = web
    assert client.get("/api/jobs", headers={"Authorization": tokens["alice"]}).status_code == 401
    assert client.get("/api/jobs", headers={"Authorization": f"Token {tokens['alice']}"}).status_code == 401
    assert client.get("/api/jobs", headers={"Authorization": f"Bearer {tokens['alice']}"}).status_code == 200


def test_the_session_cookie_is_secure_behind_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the cookie lacked `Secure` behind a TLS-terminating proxy."""
    store = Store()
    token = create_token(store, "alice")
    with live_server(make_app(store)) as url, httpx.Client(base_url=url) as client:
        csrf = csrf_of(client.get("/login").text)
        plain = client.post("/login", data={"token": token, "csrf": csrf})
        assert "secure" not in plain.headers["set-cookie"].lower()
        client.cookies.clear()
        proxied = client.post("/login", data={"token": token, "csrf": csrf}, headers={"X-Forwarded-Proto": "https"})
        assert "; secure" in proxied.headers["set-cookie"].lower()  # from 127.0.0.1, the trusted proxy
    monkeypatch.setenv("LORAFLOW_SECURE_COOKIES", "1")
    with TestClient(make_app(store)) as client:
        forced = client.post("/login", data={"token": token, "csrf": csrf_of(client.get("/login").text)},
                             follow_redirects=False)  # fmt: skip
        assert "; secure" in forced.headers["set-cookie"].lower()


def test_a_connection_that_never_finishes_its_headers_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: uvicorn waited forever for a request head sent a byte at a time (no header read timeout)."""
    import socket
    import time

    monkeypatch.setenv("LORAFLOW_HEADER_TIMEOUT_S", "1")
    with live_server(make_app(Store())) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            started = time.monotonic()
            assert sock.recv(1024) == b""  # closed by the server
            assert time.monotonic() - started < 15


def page_token(html: str) -> str:
    """The CSRF token a page gives htmx (body hx-headers)."""
    found = re.search(r'"X-CSRF-Token": "([^"]+)"', html)
    return found.group(1) if found else ""
