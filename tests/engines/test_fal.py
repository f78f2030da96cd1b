"""engine: fal driven end to end through the job runner against the fal emulator on loopback: the
dataset uploaded to storage, the queue followed (positions, logs, step counters), the LoRA downloaded
and bundled, the price shown before and recorded after; and the refusals before anything starts."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.publish.bundle import verify_bundle
from loraflow.testing.fal_emulator import FalEmulator
from tests.conftest import EXAMPLES
from tests.engines.test_engine_runs import wait_for

KEY = "emu-key-id:emu-secret"


@pytest.fixture
def fal(monkeypatch: pytest.MonkeyPatch) -> Iterator[FalEmulator]:
    emulator = FalEmulator(KEY)
    url = emulator.start()
    monkeypatch.setenv("FAL_KEY", KEY)
    monkeypatch.setenv("FAL_QUEUE_URL", url)
    monkeypatch.setenv("FAL_STORAGE_URL", url)
    monkeypatch.setenv("LORAFLOW_FAL_POLL_S", "0.05")
    yield emulator
    emulator.close()


def write_spec(tmp_path: Path, **extra: object) -> Path:
    spec = {
        "name": "mascot",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "flux-dev",
        "engine": "fal",
        "training": {"steps": 40},
        **extra,
    }
    path = tmp_path / "fal.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_fal_job_end_to_end(tmp_path: Path, fal: FalEmulator, cli) -> None:
    fal.result_503s = 1  # a busy gateway once: asked again, not taken for a failed run
    result = cli("train", write_spec(tmp_path, engine={"name": "fal", "options": {"create_masks": True}}))
    assert result.code == 0, result.out + result.err
    assert "$0.08" in result.out  # the price, shown before submit
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.COMPLETED, job.error
    assert job.step == 40 and job.cost_usd == pytest.approx(0.08)
    # What fal was sent: the packed dataset in its storage, the trigger word, the steps, the option.
    (request,) = fal.state()["requests"].values()
    assert request["app"] == "fal-ai/flux-lora-fast-training"
    assert request["input"]["trigger_word"] == "lfx" and request["input"]["steps"] == 40
    assert request["input"]["create_masks"] is True and "is_style" not in request["input"]  # as the spec asked
    token = request["input"]["images_data_url"].split("/files/")[1].split("/")[0]
    with zipfile.ZipFile(io.BytesIO(fal.files[token][1])) as zf:
        names = zf.namelist()
    assert any(n.endswith(".txt") for n in names) and sum(n.endswith((".jpg", ".png")) for n in names) >= 4
    assert "manifest.json" not in names
    # The queue as events: positions as they moved, fal's log lines, progress from its counters.
    queued = [e.data["queue_position"] for e in store.events(job.id, types=["phase"])
              if e.data.get("phase") == "queued"]
    assert queued == [2, 1, 0]
    logs = [e.data["message"] for e in store.events(job.id, types=["log"])]
    assert any("fal: Preprocessing images" in m for m in logs)
    steps = [e.data["step"] for e in store.events(job.id, types=["progress"])]
    assert steps[-1] == 40 and steps == sorted(steps) and len(steps) >= 2
    assert any("HTTP 503 reading the result" in e.data["message"] for e in store.events(job.id, types=["warning"]))
    (cost,) = store.events(job.id, types=["cost"])
    assert cost.data["usd"] == pytest.approx(0.08)
    # The LoRA fal sent, converted to the spec's layout, and bundled like any job's.
    with safe_open(str(job.folder / "mascot.safetensors"), "pt") as f:
        assert f.metadata()["loraflow.format"] == "kohya"
        keys = list(f.keys())
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert json.loads((job.folder / "engine" / "fal_config.json").read_text())["steps"] == 40
    bundle = Path(job.outputs.bundle)
    assert verify_bundle(bundle) == []
    with zipfile.ZipFile(bundle) as zf:
        meta = json.loads(zf.read("metadata.json"))
    assert meta["cost_usd"] == pytest.approx(0.08)
    assert KEY not in (job.folder / "run" / "train.log").read_text()


def test_fal_estimate_shows_the_price_with_its_source(tmp_path: Path, cli) -> None:
    result = cli("estimate", write_spec(tmp_path, training={"steps": 1000}), "--json")
    assert result.code == 0, result.out + result.err
    (row,) = json.loads(result.out)["estimates"]
    assert row["cost_usd"] == pytest.approx(2.0) and row["usd_per_step"] == 0.002
    assert "fal.ai/models/fal-ai/flux-lora-fast-training" in row["source"]


def test_fields_fal_cannot_honour_are_refused_at_validate(tmp_path: Path, cli) -> None:
    spec = write_spec(
        tmp_path,
        network={"alpha": 8},
        training={"steps": 500, "optimizer": "prodigy"},
        checkpointing={"every_n_steps": 100},
        engine={"name": "fal", "options": {"endpoint": "https://example.com"}},
    )
    result = cli("spec", "validate", spec)
    assert result.code == 2
    out = result.out + result.err
    for key in ("network.alpha", "training.optimizer", "checkpointing.every_n_steps", "engine.options.endpoint"):
        assert key in out, out
    assert "engine fal cannot honour it" in out and "Fix:" in out
    assert "training.steps" not in out.split("takes only")[0]  # steps is honoured
    assert cli("spec", "validate", write_spec(tmp_path)).code == 0


def test_fal_is_sent_only_what_the_spec_asks(tmp_path: Path, cli) -> None:
    """fal defaults create_masks to true (a mask-weighted loss): loraflow sends false unless asked, and never
    is_style, which makes fal ignore the captions: that is refused unless the captions are the trigger alone."""
    from loraflow.engines.fal import FalEngine
    from loraflow.layout import JobLayout
    from loraflow.spec import load_spec

    def fal_input(spec_path: Path) -> dict[str, object]:
        rendered = FalEngine().render(load_spec(spec_path), JobLayout("/jobs/x"), "x", "flux-dev")
        return json.loads(rendered["fal.json"])["input"]

    plain = fal_input(write_spec(tmp_path))
    assert plain["create_masks"] is False and "is_style" not in plain
    styled = write_spec(tmp_path, engine={"name": "fal", "options": {"is_style": True}})
    refused = cli("spec", "validate", styled)
    assert refused.code == 2 and "engine.options.is_style" in refused.out + refused.err
    assert "ignores the captions" in refused.out + refused.err
    trigger_only = write_spec(tmp_path, engine={"name": "fal", "options": {"is_style": True}},
                              dataset={"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx",
                                       "captions": {"backend": "template", "template": "[trigger]"}})  # fmt: skip
    assert cli("spec", "validate", trigger_only).code == 0 and fal_input(trigger_only)["is_style"] is True


def test_missing_fal_key_is_refused_before_anything(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAL_KEY", raising=False)
    result = cli("train", write_spec(tmp_path))
    assert result.code == 2
    assert "FAL_KEY" in result.out + result.err and "export FAL_KEY" in result.out + result.err
    assert Store().list_jobs() == []
    listed = cli("engines", "list").out
    assert "fal         hosted" in listed and "FAL_KEY not set" in listed


def test_platform_credits_quote_and_charge_fals_price(tmp_path: Path, fal: FalEmulator, cli) -> None:
    from loraflow.platform.config import PlatformConfig
    from loraflow.platform.credits import quote, real_cost_usd
    from loraflow.spec import load_spec

    cfg = PlatformConfig(local_usd_per_hour=3.0)  # the platform's own GPUs are not what fal runs on
    spec_path = write_spec(tmp_path)
    assert quote(load_spec(spec_path), cfg).estimate_usd == pytest.approx(0.08)
    assert cli("train", spec_path).code == 0
    store = Store()
    usd, detail = real_cost_usd(store, store.list_jobs()[0], cfg)
    assert usd == pytest.approx(0.08) and detail["hosted"]["engine"] == "fal"


def test_a_price_over_the_budget_is_refused_before_anything(tmp_path: Path, cli, fal: FalEmulator) -> None:
    result = cli("train", write_spec(tmp_path, budget={"max_usd": 0.05}))
    out = result.out + result.err
    assert result.code == 2 and "fal charges $0.08 for 40 steps, over budget.max_usd $0.05" in out, out
    assert Store().list_jobs() == [] and fal.state()["uploads"] == {}


def test_a_refused_key_fails_the_job_once_with_the_fix(tmp_path: Path, fal: FalEmulator, cli,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "wrong:key")
    assert cli("train", write_spec(tmp_path)).code == 1
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.FAILED and "FAL_KEY" in (job.error or "")
    error = store.events(job.id, types=["error"])[0]  # (the runner then records the failure too)
    assert error.data["code"] == "fal_auth" and "No user found" in error.data["message"]
    assert len(store.events(job.id, types=["train.launched"])) == 1  # not retried
    assert fal.state()["requests"] == {}


def test_a_failed_fal_run_fails_the_job_and_is_not_charged(tmp_path: Path, fal: FalEmulator, cli) -> None:
    fal.fail = "result"
    assert cli("train", write_spec(tmp_path)).code == 1
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.FAILED and "illegal memory access" in (job.error or "")
    assert job.cost_usd == 0 and len(store.events(job.id, types=["train.launched"])) == 1
    assert not (job.folder / "run" / "fal-request.json").exists()  # resuming submits a new run


def test_stopped_while_queued_cancels_and_resume_submits_again(tmp_path: Path, fal: FalEmulator, cli,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fal.queue = [50 - i for i in range(50)]  # a long queue
    assert cli("train", write_spec(tmp_path), "--detach").code == 0
    store = Store()
    job = store.list_jobs()[0]
    wait_for(lambda: any(e.data.get("phase") == "queued" for e in store.events(job.id, types=["phase"])))
    assert cli("jobs", "stop", job.id).code == 0
    wait_for(lambda: store.get(job.id).state not in ACTIVE)
    assert store.get(job.id).state is JobState.STOPPED
    assert [r["cancelled"] for r in fal.state()["requests"].values()] == [True]
    fal.queue = [0]
    assert cli("jobs", "resume", job.id).code == 0
    wait_for(lambda: store.get(job.id).state not in ACTIVE)
    assert store.get(job.id).state is JobState.COMPLETED
    assert len(fal.state()["requests"]) == 2


def test_a_fal_key_written_into_a_spec_is_refused(tmp_path: Path, cli) -> None:
    key = "123e4567-e89b-12d3-a456-426614174000:0123456789abcdef0123456789abcdef"
    result = cli("spec", "validate", write_spec(tmp_path, dataset={"path": str(EXAMPLES), "trigger_word": key}))
    out = result.out + result.err
    assert result.code == 2 and "dataset.trigger_word: looks like a secret" in out and "set FAL_KEY" in out


def test_the_api_estimate_shows_fals_price() -> None:
    from fastapi.testclient import TestClient

    from loraflow.running.trust import Grants
    from loraflow.server.app import ServiceConfig, create_app
    from loraflow.server.tokens import create_token

    store = Store()
    token = create_token(store, "alice")
    spec = {"name": "m", "dataset": {"path": "x", "trigger_word": "lfx"}, "base_model": "flux-dev", "engine": "fal",
            "training": {"steps": 500}}
    body, headers = {"spec": json.dumps(spec)}, {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(store, ServiceConfig())) as client:
        refused = client.post("/api/estimate", json=body, headers=headers)  # the operator's fal account
    assert refused.status_code == 422 and "LORAFLOW_SERVICE_HOSTED_ENGINES=fal" in refused.text
    granted = ServiceConfig(grants=Grants(hosted_engines=frozenset({"fal"})))
    with TestClient(create_app(store, granted)) as client:
        answer = client.post("/api/estimate", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    (row,) = answer.json()["estimates"]
    assert row["cost_usd"] == pytest.approx(1.0) and row["app"] == "fal-ai/flux-lora-fast-training"


def test_a_killed_client_follows_the_same_request_and_never_submits_twice(tmp_path: Path, fal: FalEmulator,
                                                                          cli) -> None:
    import os
    import signal

    from loraflow.hosts.base import Handle
    from loraflow.hosts.local import LocalHost
    from loraflow.layout import JobLayout

    fal.progress_polls = 400  # fal trains for a while
    assert cli("train", write_spec(tmp_path), "--detach").code == 0
    store = Store()
    job = store.list_jobs()[0]
    wait_for(lambda: store.get(job.id).step > 0)
    os.kill(LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "train")), signal.SIGKILL)
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300)
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, job.error
    assert len(fal.state()["requests"]) == 1  # one request, one charge
    assert len(store.events(job.id, types=["train.launched"])) == 2
    logs = [e.data["message"] for e in store.events(job.id, types=["log"])]
    assert any(m.startswith("following fal request") for m in logs)
    assert job.cost_usd == pytest.approx(0.08)


def test_pack_gives_fal_txt_captions_whatever_the_extension(tmp_path: Path) -> None:
    from loraflow.engines.fal_client import pack

    (tmp_path / "a.jpg").write_bytes(b"jpg")
    (tmp_path / "a.caption").write_text("lfx waving")
    (tmp_path / "manifest.json").write_text("{}")
    with zipfile.ZipFile(io.BytesIO(pack(tmp_path, "caption"))) as zf:
        assert sorted(zf.namelist()) == ["a.jpg", "a.txt"] and zf.read("a.txt") == b"lfx waving"


def test_a_service_user_cannot_spend_the_operators_fal_account_unless_granted() -> None:
    from loraflow.running.trust import Grants, refusals

    for raw in ({"engine": "fal"}, {"engine": {"name": "fal"}}):
        (line,) = refusals(raw, Grants(), [])
        assert line.startswith("engine.name: fal") and "LORAFLOW_SERVICE_HOSTED_ENGINES=fal" in line
        assert refusals(raw, Grants(hosted_engines=frozenset({"fal"})), []) == []


def test_stopped_while_fal_trains_resumes_by_following_the_same_request(tmp_path: Path, fal: FalEmulator,
                                                                       cli) -> None:
    fal.progress_polls = 400  # fal cannot cancel a run it has started: the stop keeps its request id
    assert cli("train", write_spec(tmp_path), "--detach").code == 0
    store = Store()
    job = store.list_jobs()[0]
    wait_for(lambda: store.get(job.id).step > 0)
    assert cli("jobs", "stop", job.id).code == 0
    wait_for(lambda: store.get(job.id).state not in ACTIVE)
    assert store.get(job.id).state is JobState.STOPPED
    assert (job.folder / "run" / "fal-request.json").exists()
    fal.progress_polls = 1
    assert cli("jobs", "resume", job.id).code == 0
    wait_for(lambda: store.get(job.id).state not in ACTIVE)
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, job.error
    assert len(fal.state()["requests"]) == 1 and job.cost_usd == pytest.approx(0.08)
