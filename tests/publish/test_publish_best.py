"""Publishing defaults to the scorecard's best checkpoint (issue 27): the publish stage of a job, `loraflow
publish`, the API and the web UI's button take it unless the user names another, and each says which and
why; the final LoRA when there is no best or its checkpoint is gone."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from tests.conftest import EXAMPLES
from tests.publish.test_s3 import s3, s3_endpoint  # noqa: F401 - fixtures


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "shared-models"))


@pytest.fixture
def client() -> Iterator[TestClient]:
    from loraflow.server import ui
    from loraflow.server.app import ServiceConfig, create_app

    app = create_app(config=ServiceConfig(no_auth=True), sweep_every_s=None)
    ui.install(app)
    with TestClient(app) as c:
        token = re.search(r'"X-CSRF-Token": "([^"]+)"', c.get("/").text).group(1)
        c.headers["X-CSRF-Token"] = token
        yield c


def keys(s3) -> set[str]:  # noqa: F811 - the fixture's client
    return {o["Key"] for o in s3.list_objects_v2(Bucket="loras").get("Contents", [])}


def lora_key(job_id: str, step: int | None) -> str:
    return f"users/alice/{job_id}/mascot{'' if step is None else f'-step{step:06d}'}.safetensors"


def test_every_door_publishes_the_scorecards_best_checkpoint_unless_told_otherwise(
    tmp_path: Path, cli, client: TestClient, s3, s3_endpoint: str  # noqa: F811 - the fixtures
) -> None:
    spec = {
        "name": "mascot",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "tiny-flux",
        "training": {"steps": 20},
        "sampling": {"every_n_steps": 0},
        "checkpointing": {"every_n_steps": 10, "keep_last": 5},
        "publish": {
            "targets": [{"type": "s3", "bucket": "loras", "prefix": "users/alice", "endpoint_url": s3_endpoint}]
        },
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = cli("train", tmp_path / "spec.yaml")
    assert result.code == 0, result.out + result.err
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.COMPLETED
    # the job's own publish stage took the scorecard's best, whichever it is, and said so
    best = job.outputs.scorecard["best"]
    assert best["step"] in (10, 20)
    first = job.outputs.published[0]
    assert first["checkpoint_step"] == best["checkpoint_step"]
    assert "the scorecard's best" in first["chosen"] and best["why"] in first["chosen"]
    assert lora_key(job.id, best["checkpoint_step"]) in keys(s3)
    published = [e.data for e in store.events(job.id, types=["published"])]
    assert published[0]["chosen"] == first["chosen"]

    # the scorecard names step 10 (a checkpoint, not the final file): `loraflow publish` takes it and says so
    card = dict(job.outputs.scorecard)
    card["best"] = {"step": 10, "name": "step-000010", "checkpoint_step": 10, "why": "step 10 scores highest"}
    store.update_outputs(job.id, scorecard=card)
    for key in [k for k in keys(s3) if k.endswith(".safetensors")]:
        s3.delete_object(Bucket="loras", Key=key)
    shown = cli("publish", job.id)
    assert shown.code == 0, shown.out + shown.err
    assert "publishing step 10, the scorecard's best: step 10 scores highest" in shown.out
    assert lora_key(job.id, 10) in keys(s3) and lora_key(job.id, None) not in keys(s3)
    assert store.get(job.id).outputs.published[-1]["checkpoint_step"] == 10

    # the final LoRA when asked for, with a note naming the best and how to publish it
    final = cli("publish", job.id, "--checkpoint", "final")
    assert final.code == 0, final.out + final.err
    assert "the final LoRA (step 20), as asked" in final.out and "publish it with --checkpoint 10" in final.out
    assert lora_key(job.id, None) in keys(s3)
    assert cli("publish", job.id, "--checkpoint", "latest").code == 2  # not best, final or a step: refused

    # the API: the best by default, the answer says which and why; a named step or "final" as asked
    answer = client.post(f"/api/jobs/{job.id}/publish")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["checkpoint_step"] == 10 and body["chosen"].startswith("step 10, the scorecard's best")
    assert client.post(f"/api/jobs/{job.id}/publish", json={"checkpoint": "final"}).json()["checkpoint_step"] is None
    assert client.post(f"/api/jobs/{job.id}/publish", json={"checkpoint": 10}).json()["chosen"] == "step 10, as asked"
    # the web UI's button names what it publishes
    page = client.get(f"/ui/jobs/{job.id}/live", headers={"hx-request": "true"})
    assert page.status_code == 200 and ">Publish step 10 (the scorecard's best)</button>" in page.text

    # the best checkpoint removed since (gc): the final LoRA, and why
    shutil.rmtree(job.folder / "checkpoints" / "step-000010")
    gone = cli("publish", job.id)
    assert gone.code == 0, gone.out + gone.err
    assert "the final LoRA (step 20): the scorecard's best, step 10, is no longer kept" in gone.out
    assert store.get(job.id).outputs.published[-1]["checkpoint_step"] is None
