"""Pushing a published LoRA to a ComfyUI Deploy workspace (its volume/model API, emulated on loopback):
from the Hugging Face repo a job just published to, or later from a signed S3 link; the registry records
where it went; bad input and a download ComfyDeploy cannot make are refused with the fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.running.trust import Grants, refusals
from loraflow.testing.comfydeploy_emulator import ComfyDeployEmulator
from loraflow.testing.hub_standin import HubStandin
from tests.conftest import EXAMPLES
from tests.engines.test_fal import fal  # noqa: F401 - the fixture: a fast job without a trainer
from tests.publish.test_huggingface import no_xet
from tests.publish.test_s3 import s3, s3_endpoint  # noqa: F401 - fixtures
from tests.server.test_api import api  # noqa: F401 - the fixture: the service's API

KEY = "cd_test_key_123"


@pytest.fixture
def comfy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ComfyDeployEmulator]:
    emulator = ComfyDeployEmulator(KEY)
    monkeypatch.setenv("COMFY_DEPLOY_API_URL", emulator.start())
    monkeypatch.setenv("COMFY_DEPLOY_API_KEY", KEY)
    yield emulator
    emulator.close()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandin]:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # a loopback endpoint; nothing leaves the machine
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    no_xet(monkeypatch)
    with HubStandin() as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_TOKEN", h.state.token)
        yield h


def train(tmp_path: Path, cli, targets: list[dict[str, object]]) -> str:
    spec = {
        "name": "mascot",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "flux-dev",
        "engine": "fal",
        "training": {"steps": 20},
        "publish": {"targets": targets},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli("train", path)
    assert result.code == 0, result.out + result.err
    return Store().list_jobs()[0].id


def test_spec_target_registers_the_lora_from_the_hub_repo(
    tmp_path: Path, cli, fal, hub: HubStandin, comfy: ComfyDeployEmulator  # noqa: F811
) -> None:
    job_id = train(tmp_path, cli, [{"type": "huggingface", "repo_id": "alice/mascot", "private": False},
                                   {"type": "comfydeploy", "folder_path": "loras/flux"}])
    job = Store().get(job_id)
    assert job.state is JobState.COMPLETED, job.error
    lora = (job.folder / "mascot.safetensors").read_bytes()
    assert comfy.volume["loras/flux/mascot.safetensors"] == lora  # what ComfyDeploy fetched is the LoRA
    hf, pushed = job.outputs.published
    assert pushed["type"] == "comfydeploy" and pushed["status"] == "success"
    assert pushed["path"] == "loras/flux/mascot.safetensors"
    assert pushed["source"] == f"{hub.url}/alice/mascot/resolve/{hf['commit']}/mascot.safetensors"
    assert KEY not in str(job.outputs)


def test_push_later_from_a_private_bucket_and_the_registry_records_it(
    tmp_path: Path, cli, fal, s3, s3_endpoint: str, comfy: ComfyDeployEmulator  # noqa: F811
) -> None:
    from loraflow.platform.config import PlatformConfig
    from loraflow.platform.registry import get_model, register_job

    job_id = train(tmp_path, cli, [{"type": "s3", "bucket": "loras", "endpoint_url": s3_endpoint}])
    store = Store()
    slug = register_job(store, store.get(job_id), PlatformConfig())["slug"]
    result = cli("publish", job_id, "--to", "comfydeploy")
    assert result.code == 0, result.out + result.err
    assert "published to comfydeploy: loras/mascot.safetensors (success)" in result.out
    assert comfy.volume["loras/mascot.safetensors"] == (store.get(job_id).folder / "mascot.safetensors").read_bytes()
    (downloaded,) = comfy.models
    assert "X-Amz-Signature" in downloaded["user_url"]  # ComfyDeploy was given a signed link ...
    model = get_model(store, slug, None)
    pushed = [p for p in model["published_to"] if p["type"] == "comfydeploy"]
    assert pushed and pushed[0]["source"] == f"s3://loras/{job_id}/mascot.safetensors"
    assert "Signature" not in str(store.get(job_id).outputs) + str(model)  # ... which is never stored
    again = cli("publish", job_id, "--to", "comfydeploy")  # the volume has it: refused with the fix
    assert again.code == 2 and "already has loras/mascot.safetensors" in again.out + again.err


def test_a_download_comfydeploy_cannot_make_is_reported_with_the_fix(
    tmp_path: Path, cli, fal, hub: HubStandin, comfy: ComfyDeployEmulator  # noqa: F811
) -> None:
    job_id = train(tmp_path, cli, [{"type": "huggingface", "repo_id": "alice/secret", "private": True}])
    result = cli("publish", job_id, "--to", "comfydeploy")  # the workspace has no HF token for a private repo
    out = result.out + result.err
    assert result.code == 2 and "could not download" in out and "HF token" in out
    assert comfy.volume == {}


def test_missing_or_refused_key_and_bad_targets(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch,
                                                fal, hub: HubStandin, comfy: ComfyDeployEmulator) -> None:  # noqa: F811
    job_id = train(tmp_path, cli, [{"type": "huggingface", "repo_id": "alice/mascot", "private": False}])
    monkeypatch.setenv("COMFY_DEPLOY_API_KEY", "wrong")
    refused = cli("publish", job_id, "--to", "comfydeploy")
    assert refused.code == 2 and "COMFY_DEPLOY_API_KEY" in refused.out + refused.err
    monkeypatch.delenv("COMFY_DEPLOY_API_KEY")
    missing = cli("publish", job_id, "--to", "comfydeploy")
    assert missing.code == 2 and "set COMFY_DEPLOY_API_KEY" in missing.out + missing.err
    assert cli("publish", job_id, "--to", "civitai").code == 2
    spec = yaml.safe_load((tmp_path / "spec.yaml").read_text())
    for targets, problem in (
        ([{"type": "huggingface", "repo_id": "a/b"}, {"type": "comfydeploy", "folder_path": "../etc"}],
         "publish.targets[1].folder_path: give a folder inside the volume"),
        ([{"type": "comfydeploy"}], "put a huggingface or s3 target before it"),
    ):
        spec["publish"]["targets"] = targets
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
        bad = cli("spec", "validate", tmp_path / "bad.yaml")
        assert bad.code == 2 and problem in bad.out + bad.err, bad.out + bad.err


def test_api_publish_route_pushes_only_when_the_operator_grants_it(
    tmp_path: Path, cli, api, monkeypatch: pytest.MonkeyPatch, fal, hub: HubStandin,  # noqa: F811
    comfy: ComfyDeployEmulator,
) -> None:
    job_id = train(tmp_path, cli, [{"type": "huggingface", "repo_id": "alice/mascot", "private": False}])
    Store().update(job_id, owner="alice")
    refused = api("POST", f"/api/jobs/{job_id}/publish", json={"to": "comfydeploy"})
    assert refused.status_code == 403 and "LORAFLOW_SERVICE_COMFYDEPLOY" in refused.json()["detail"]
    assert api("POST", f"/api/jobs/{job_id}/publish", json={"to": "civitai"}).status_code == 422
    monkeypatch.setenv("LORAFLOW_SERVICE_COMFYDEPLOY", "1")
    api.client.app.state.config.grants = Grants.from_env()  # what the server reads at start
    pushed = api("POST", f"/api/jobs/{job_id}/publish", json={"to": "comfydeploy"})
    assert pushed.status_code == 200, pushed.text
    (result,) = pushed.json()["published"]
    assert result["type"] == "comfydeploy" and result["status"] == "success"
    assert "loras/mascot.safetensors" in comfy.volume


def test_a_service_spec_cannot_push_to_the_operators_workspace_unless_granted() -> None:
    raw = {"publish": {"targets": [{"type": "huggingface", "repo_id": "svc/m"}, {"type": "comfydeploy"}]}}
    (line,) = [p for p in refusals(raw, Grants(hf_namespaces=frozenset({"svc"})), []) if "targets[1]" in p]
    assert "LORAFLOW_SERVICE_COMFYDEPLOY=1" in line and "Fix:" in line
    assert refusals(raw, Grants(hf_namespaces=frozenset({"svc"}), comfydeploy=True), []) == []


def test_a_public_bucket_without_a_public_domain_is_fetched_through_a_signed_link(
    tmp_path: Path, cli, fal, s3, s3_endpoint: str, comfy: ComfyDeployEmulator, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """`public: true` sends no ACL, so nothing says the plain URL serves: ComfyDeploy gets a signed link,
    unless the operator configured the bucket's public address (then that, as it is)."""
    monkeypatch.delenv("LORAFLOW_S3_PUBLIC_BASE_URL", raising=False)
    job_id = train(tmp_path, cli, [{"type": "s3", "bucket": "loras", "endpoint_url": s3_endpoint, "public": True},
                                   {"type": "comfydeploy", "filename": "signed.safetensors"}])
    job = Store().get(job_id)
    assert job.state is JobState.COMPLETED, job.error
    (downloaded,) = comfy.models
    assert "X-Amz-Signature" in downloaded["user_url"]
    assert comfy.volume["loras/signed.safetensors"] == (job.folder / "mascot.safetensors").read_bytes()
    import json

    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                       "Resource": "arn:aws:s3:::loras/*"}]}  # fmt: skip
    s3.put_bucket_policy(Bucket="loras", Policy=json.dumps(policy))  # public by its policy, as AWS does it now
    monkeypatch.setenv("LORAFLOW_S3_PUBLIC_BASE_URL", f"{s3_endpoint}/loras")  # the bucket served as it is
    again = train(tmp_path, cli, [{"type": "s3", "bucket": "loras", "endpoint_url": s3_endpoint, "public": True},
                                  {"type": "comfydeploy", "filename": "served.safetensors"}])
    assert Store().get(again).state is JobState.COMPLETED
    served = next(m for m in comfy.models if m["model_name"] == "served.safetensors")
    assert served["user_url"] == f"{s3_endpoint}/loras/{again}/mascot.safetensors"
