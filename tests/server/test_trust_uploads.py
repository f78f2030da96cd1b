"""The service's trust boundary for uploads and webhooks, tried as a hostile API user would (issue 15).

Zip bombs and pixel bombs are refused with server memory flat and nothing left on disk; a user cannot
raise the operator's limits; abandoned uploads expire; webhooks of a service user's jobs reach public
addresses only (redirects included) and are signed with that user's own secret.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import threading
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from loraflow import paths
from loraflow.dataset import DatasetRun, sources
from loraflow.jobs.states import ACTIVE
from loraflow.jobs.store import Store
from loraflow.notify import addresses
from loraflow.notify.addresses import check_webhook_url
from loraflow.notify.notifier import Notifier
from loraflow.notify.signing import HEADER, user_secret, verify
from loraflow.running import duties as sweep_module
from loraflow.server import uploads
from loraflow.server.app import ServiceConfig, create_app
from loraflow.server.tokens import create_token
from loraflow.spec import DatasetChecks, NotificationTarget, parse_spec
from tests.conftest import EXAMPLES

SPEC = {
    "name": "trustjob",
    "dataset": {"trigger_word": "lfx"},
    "base_model": "tiny-flux",
    "training": {"steps": 400},
    "sampling": {"prompts": ["[trigger] on the moon"], "every_n_steps": 0},
    "checkpointing": {"every_n_steps": 1000},
}
SHARED = "whsec_shared_operator_secret"
MB = 1 << 20


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "shared-models"))
    monkeypatch.delenv("LORAFLOW_WEBHOOK_ALLOW_PRIVATE", raising=False)


class Api:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def __call__(self, method: str, url: str, user: str = "alice", **kw):
        return self.client.request(method, url, headers={"Authorization": f"Bearer {self.tokens[user]}"}, **kw)


@pytest.fixture
def api() -> Iterator[Api]:
    store = Store()
    tokens = {u: create_token(store, u) for u in ("alice", "bob")}
    config = ServiceConfig(max_upload_mb=50, max_concurrent_jobs=3)
    with TestClient(create_app(store, config, sweep_every_s=None)) as client:
        yield Api(client, tokens)


def uploads_left() -> list[Path]:
    root = paths.home() / "uploads"
    return list(root.iterdir()) if root.exists() else []


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the peak so far, in MB (Linux: KiB)


def zip_bomb(megabytes: int = 400) -> bytes:
    """A ~400 KB zip of one member holding `megabytes` of zeros, written in chunks (never in memory)."""
    buf = io.BytesIO()
    with (
        zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("photos/zeros.png", "w", force_zip64=True) as out,
    ):
        block = bytes(MB)
        for _ in range(megabytes):
            out.write(block)
    return buf.getvalue()


def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A real, valid 1-bit PNG of width x height pixels, ~50 KB, built without allocating its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def dataset_files(extra: list[tuple[str, bytes]] = ()) -> list[tuple[str, tuple[str, bytes]]]:
    files = [("files", (p.name, p.read_bytes())) for p in sorted((EXAMPLES / "sample_dataset").iterdir())]
    return files + [("files", item) for item in extra]


# --- uploads -------------------------------------------------------------------------------------------


def test_zip_bomb_is_refused_naming_the_limit_with_memory_flat_and_nothing_left(api: Api) -> None:
    bomb = zip_bomb()
    assert len(bomb) < 600_000
    before = rss_mb()
    r = api("POST", "/api/uploads", files=[("files", ("bomb.zip", bomb, "application/zip"))])
    assert r.status_code == 413, r.text
    assert "50 MB" in r.json()["detail"] and str(paths.home()) not in r.text
    assert uploads_left() == []
    spec = yaml.safe_dump({**SPEC, "dataset": {"trigger_word": "lfx", "checks": {"max_archive_bytes": 10 * MB}}})
    r = api("POST", "/api/jobs", data={"spec": spec}, files={"dataset": ("bomb.zip", bomb, "application/zip")})
    assert r.status_code == 422 and "archive_too_large" in json.dumps(r.json().get("findings")), r.text
    # Without a limit in the spec, the service's (the upload size, 50 MB) is the one that applies.
    r = api("POST", "/api/jobs", data={"spec": yaml.safe_dump(SPEC)}, files={"dataset": ("bomb.zip", bomb)})
    assert r.status_code == 422 and f"limit of {50 * MB}" in r.json()["detail"], r.text
    assert rss_mb() - before < 100
    assert uploads_left() == [] and Store().list_jobs() == []


def test_an_archive_lying_about_its_sizes_stops_at_the_limit_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Declared sizes are checked first; if they lie, the expansion itself stops the moment it passes the
    limit, having written at most the limit, held one chunk in memory, and removed what it wrote."""
    archive = paths.home() / "bomb.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(zip_bomb(200))
    monkeypatch.setattr(sources, "_check_totals", lambda *a: [])  # the headers "say" it is small
    on_disk: list[int] = []
    real_rmtree = sources.shutil.rmtree

    def measured_rmtree(path: Path, **kw: object) -> None:
        on_disk.append(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()))
        real_rmtree(path, **kw)

    monkeypatch.setattr(sources.shutil, "rmtree", measured_rmtree)
    entries, _ = sources.open_source(archive, sources.ArchiveLimits(1 << 40, 10))
    dest = paths.home() / "out"
    tracemalloc.start()
    try:
        with pytest.raises(sources.ArchiveTooLarge, match=str(20 * MB)):
            sources.extract(entries, dest, 20 * MB, lambda e: "x.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MB
    assert on_disk and on_disk[0] <= 20 * MB
    assert not dest.exists()


def test_pixel_bomb_with_a_raised_spec_limit_is_refused_with_memory_flat(api: Api) -> None:
    bomb = huge_png()
    before = rss_mb()
    raised = {**SPEC, "dataset": {"trigger_word": "lfx", "checks": {"max_pixels": int(1e9)}}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for _field, (name, data) in dataset_files([("huge.png", bomb)]):
            zf.writestr(name, data)
    r = api("POST", "/api/jobs", data={"spec": yaml.safe_dump(raised)}, files={"dataset": ("d.zip", buf.getvalue())})
    assert r.status_code == 422 and any(e.startswith("dataset.checks.max_pixels") for e in r.json()["errors"]), r.text
    assert "over this service's limit 80000000" in r.json()["detail"]
    # The operator may raise the service's own limit; PIL's ceiling still holds for every thread.
    api.client.app.state.config.max_pixels = int(1e9)
    r = api("POST", "/api/jobs", data={"spec": yaml.safe_dump(raised)}, files={"dataset": ("d.zip", buf.getvalue())})
    assert r.status_code == 422 and r.json()["title"] == "dataset not fit to train", r.text
    bombs = [f for f in r.json()["findings"] if f["code"] == "decompression_bomb"]
    assert bombs and bombs[0]["file"] == "huge.png" and "400000000 pixels" in bombs[0]["message"]
    up = api("POST", "/api/uploads", files=dataset_files([("huge.png", bomb)]))
    assert up.status_code == 201 and "decompression_bomb" in json.dumps(up.json()["report"]["findings"])
    assert rss_mb() - before < 100
    assert Store().list_jobs() == []


def test_pil_pixel_limit_is_never_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread decoding at the same moment must keep PIL's protection (the old code set it to None)."""
    seen: list[int | None] = []
    real_open = Image.open

    def spy(*a: object, **kw: object) -> Image.Image:
        seen.append(Image.MAX_IMAGE_PIXELS)
        return real_open(*a, **kw)

    monkeypatch.setattr(Image, "open", spy)
    default = Image.MAX_IMAGE_PIXELS
    (tmp_path / "huge.png").write_bytes(huge_png())
    (tmp_path / "small.png").write_bytes((EXAMPLES / "sample_dataset" / "mascot_00.jpg").read_bytes())
    report = DatasetRun(tmp_path, DatasetChecks(max_pixels=int(1e9), min_images=1)).check()
    assert "decompression_bomb" in report.codes()
    assert seen and all(v == default for v in seen)


def test_upload_answer_has_no_server_path_and_names_are_sanitized(api: Api) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted((EXAMPLES / "sample_dataset").iterdir()):
            zf.write(p, f"top/odd $name;{p.name}")
        zf.writestr("top/.hidden.png", b"x")
    r = api("POST", "/api/uploads", files=[("files", ("d.zip", buf.getvalue()))])
    assert r.status_code == 201, r.text
    assert str(paths.home()) not in r.text and r.json()["report"]["source"].startswith("upload ")
    captions = api("GET", f"/api/uploads/{r.json()['upload_id']}/captions").json()
    assert len(captions) == 8 and all(set(n) <= set("abcdefghijklmnopqrstuvwxyz0123456789_.-") for n in captions)
    assert captions.get("odd_name_mascot_00.jpg")  # paired with its caption


def test_abandoned_uploads_expire_but_not_one_a_job_still_uses(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [api("POST", "/api/uploads", files=dataset_files()).json()["upload_id"] for _ in range(3)]
    abandoned, used, fresh = (uploads.folder("alice", i) for i in ids)
    store: Store = api.client.app.state.store
    job = store.create_job(parse_spec({**SPEC, "dataset": {"path": str(used)}}), owner="alice")
    store.transition(job.id, "stopped")  # stopped can be resumed: it still needs its dataset
    old = time.time() - 25 * 3600
    for folder in (abandoned, used):
        for f in [folder.parent, *folder.parent.rglob("*")]:
            os.utime(f, (old, old))
    monkeypatch.setattr(sweep_module, "_uploads_swept_at", None)
    done = sweep_module.sweep(store)
    assert done["uploads_removed"] == [abandoned.parent.name]
    assert not abandoned.exists() and used.is_dir() and fresh.is_dir()
    monkeypatch.setenv("LORAFLOW_UPLOAD_TTL_HOURS", "0")
    store.transition(job.id, "cancelled")
    assert sorted(sweep_module.expire_uploads(store)) == sorted([used.parent.name, fresh.parent.name])
    assert uploads_left() == []


# --- webhooks ------------------------------------------------------------------------------------------


class Receiver:
    def __init__(self, host: str = "127.0.0.1", redirect_to: str | None = None) -> None:
        self.received: list[tuple[dict, bytes, dict]] = []
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((json.loads(body), body, dict(self.headers)))
                outer.got.set()
                self.send_response(307 if redirect_to else 204)
                if redirect_to:
                    self.send_header("Location", redirect_to)
                self.end_headers()

        self.server = ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{host}:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_check_webhook_url_refuses_every_non_public_range() -> None:
    refused = {
        "http://127.0.0.1:9999/x": "loopback",
        "http://localhost/x": "loopback",
        "http://[::1]/x": "loopback",
        "http://[::ffff:127.0.0.1]/x": "loopback",
        "http://2130706433/x": "loopback",  # spellings the resolver turns into 127.0.0.1
        "http://0x7f.1/x": "loopback",
        "http://[::ffff:169.254.169.254]/x": "metadata",
        "http://10.1.2.3/x": "private",
        "http://192.168.0.5/x": "private",
        "http://172.16.0.1/x": "private",
        "http://[fd12::1]/x": "private",
        "http://169.254.10.10/x": "link-local",
        "http://169.254.169.254/latest/meta-data": "metadata",
        "http://[fd00:ec2::254]/x": "metadata",
        "http://100.64.0.1/x": "carrier-grade NAT",
        "http://224.0.0.1/x": "multicast",
        "http://0.0.0.0/x": "unspecified",
        "ftp://example.com/x": "http",
    }
    for url, why in refused.items():
        problem = check_webhook_url(url, allow_private=False)
        assert problem is not None and why in problem, (url, problem)
    assert check_webhook_url("https://8.8.8.8/hook", allow_private=False) is None
    assert check_webhook_url("http://127.0.0.1:9999/x", allow_private=True) is None  # one's own machine
    assert check_webhook_url("gopher://127.0.0.1/", allow_private=True) is not None


def test_webhook_to_loopback_is_refused_for_a_service_user(
    api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {**SPEC, "notifications": [{"type": "slack", "url": "https://8.8.8.8/x"}]}  # public: allowed
    spec["notifications"].append({"type": "webhook", "url": receiver.url})
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        for _field, (name, data) in dataset_files():
            zf.writestr(name, data)
    r = api("POST", "/api/jobs", data={"spec": yaml.safe_dump(spec)}, files={"dataset": ("d.zip", zipped.getvalue())})
    assert r.status_code == 422 and any(e.startswith("notifications[1].url") for e in r.json()["errors"]), r.text
    assert "loopback" in r.json()["detail"] and uploads_left() == [] and Store().list_jobs() == []
    # Checked again at delivery (a name may resolve elsewhere later): a service user's job sends nothing.
    store = Store()
    job = store.create_job(parse_spec({**SPEC, "dataset": {"path": "/x"}}), owner="alice")
    n = Notifier(store, job.id, [NotificationTarget(type="webhook", url=receiver.url)], poll_s=0.05).start()
    store.transition(job.id, "preparing")
    n.stop()
    deliveries = store.events(job.id, types=["webhook.delivery"])
    assert deliveries and all(not d.data["ok"] and "loopback" in d.data["error"] for d in deliveries)
    assert receiver.received == []


def test_redirect_to_a_private_address_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Receiver("127.0.0.2")
    outer = Receiver("127.0.0.1", redirect_to=inner.url)
    real = addresses.forbidden_reason
    # The first receiver stands for a public host; the one it redirects to stays what it is: loopback.
    monkeypatch.setattr(addresses, "forbidden_reason", lambda ip: None if str(ip) == "127.0.0.1" else real(ip))
    try:
        store = Store()
        for owner, followed in (("alice", False), ("local", True)):
            job = store.create_job(parse_spec({**SPEC, "dataset": {"path": "/x"}}), owner=owner)
            target = NotificationTarget(type="webhook", url=outer.url, events=["job.created"])
            Notifier(store, job.id, [target], poll_s=0.05, base_delay_s=0.01).start().stop()
            [delivery] = store.events(job.id, types=["webhook.delivery"])
            assert delivery.data["ok"] is followed, (owner, delivery.data)
            if not followed:
                assert "redirect" in delivery.data["error"] and "127.0.0.2" in delivery.data["error"]
                assert inner.received == [] and len(outer.received) == 1
        assert len(inner.received) == 1  # one's own machine follows it
    finally:
        inner.close()
        outer.close()


def test_service_users_webhooks_are_signed_with_their_own_secret(
    api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAFLOW_WEBHOOK_SECRET", SHARED)
    monkeypatch.setenv("LORAFLOW_WEBHOOK_ALLOW_PRIVATE", "1")  # the operator allows a loopback receiver
    alice = api("GET", "/api/webhook-secret").json()["secret"]
    bob = api("GET", "/api/webhook-secret", "bob").json()["secret"]
    assert alice == user_secret(SHARED, "alice") and len({alice, bob, SHARED}) == 3
    spec = {**SPEC, "notifications": [{"type": "webhook", "url": receiver.url, "events": ["job.started"]}]}
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        for _field, (name, data) in dataset_files():
            zf.writestr(name, data)
    r = api("POST", "/api/jobs", data={"spec": yaml.safe_dump(spec)}, files={"dataset": ("d.zip", zipped.getvalue())})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    try:
        assert receiver.got.wait(180), "no webhook arrived"
    finally:
        api("POST", f"/api/jobs/{job_id}/cancel")
        deadline = time.monotonic() + 180
        while api("GET", f"/api/jobs/{job_id}").json()["state"] in {s.value for s in ACTIVE}:
            assert time.monotonic() < deadline, "the job did not stop"
            time.sleep(0.3)
    payload, body, headers = receiver.received[0]
    assert payload["job_id"] == job_id
    assert verify(alice, headers[HEADER], body)
    assert not verify(SHARED, headers[HEADER], body) and not verify(bob, headers[HEADER], body)


def test_the_workers_dispatcher_keeps_the_same_policy_and_secret(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs whose runner is gone are delivered by the worker's Dispatcher (every job's outbox): the same
    per-user secret and address policy as a runner's Notifier."""
    from loraflow.notify.notifier import Dispatcher

    monkeypatch.setenv("LORAFLOW_WEBHOOK_SECRET", SHARED)
    monkeypatch.setenv("LORAFLOW_WEBHOOK_RETRY_S", "0.01")
    store = Store()
    target = [{"type": "webhook", "url": receiver.url, "events": ["job.created"]}]

    def deliver(owner: str) -> list[dict]:
        job = store.create_job(parse_spec({**SPEC, "dataset": {"path": "/x"}, "notifications": target}), owner=owner)
        Dispatcher(store, poll_s=0.05).start().stop(flush_timeout_s=30)
        return [e.data for e in store.events(job.id, types=["webhook.delivery"])]

    carol = deliver("carol")
    assert receiver.received == [] and carol and "loopback" in carol[0]["error"]
    monkeypatch.setenv("LORAFLOW_WEBHOOK_ALLOW_PRIVATE", "1")
    bob = deliver("bob")
    assert bob and bob[-1]["ok"], bob
    _payload, body, headers = receiver.received[0]
    assert verify(user_secret(SHARED, "bob"), headers[HEADER], body) and not verify(SHARED, headers[HEADER], body)


def test_https_webhook_goes_to_the_checked_address_with_its_own_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pinning must not break TLS: the request goes to the resolved address, the certificate is checked
    against the name in the URL (SNI), and the receiver sees that name in the Host header."""
    import asyncio
    import datetime
    import ssl

    import httpx

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from loraflow.notify.addresses import AddressPolicy
    from loraflow.notify.webhooks import deliver_async

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    receiver = Receiver()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    receiver.server.socket = server_ctx.wrap_socket(receiver.server.socket, server_side=True)
    port = receiver.server.server_address[1]
    real = addresses.forbidden_reason
    monkeypatch.setattr(addresses, "forbidden_reason", lambda ip: None if str(ip) == "127.0.0.1" else real(ip))
    monkeypatch.setattr(
        addresses, "resolve", lambda host, port: [addresses.ipaddress.ip_address("127.0.0.1")] if host else []
    )

    async def post() -> object:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))) as client:
            url = f"https://hooks.example.test:{port}/hook"
            return await deliver_async(client, url, b'{"a": 1}', {}, attempts=1, policy=AddressPolicy(False))

    try:
        result = asyncio.run(post())
    finally:
        receiver.close()
    assert result.ok, result
    assert receiver.received[0][2]["Host"] == f"hooks.example.test:{port}"
