"""The result check between train and package, through the whole local job: a builtin job whose spec
trains nothing ends `failed` with lora_inert and a hint, nothing is packaged, the S3 target it names gets
nothing and `loraflow publish` refuses it; a trained job passes with every verdict recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.running.result_check import failed_checkpoints
from tests.conftest import EXAMPLES
from tests.publish.test_s3 import s3, s3_endpoint  # noqa: F401 - fixtures


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "shared-models"))


def write_spec(tmp_path: Path, endpoint: str, **training: object) -> Path:
    spec = {
        "name": "mascot",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "tiny-flux",
        "training": {"steps": 20, **training},
        "sampling": {"prompts": ["[trigger] on the moon"], "every_n_steps": 0, "at_end": False},
        "checkpointing": {"every_n_steps": 10, "keep_last": 5},
        # a prefix of its own: moto's buckets outlive one test
        "publish": {"targets": [{"type": "s3", "bucket": "loras", "prefix": tmp_path.name, "endpoint_url": endpoint}]},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_spec_that_trains_nothing_fails_lora_inert_and_is_never_published(
    tmp_path: Path, cli, s3, s3_endpoint: str  # noqa: F811 - the fixtures
) -> None:
    # The spec refuses learning_rate 0 (it must be > 0); 1e-30 is the honest equivalent: Adam moves each
    # weight by about the learning rate per step, so the B matrices stay ~1e-29, 23 orders below their layers.
    result = cli("train", write_spec(tmp_path, s3_endpoint, learning_rate=1e-30))
    assert result.code != 0
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.FAILED, job.error
    (error,) = store.events(job.id, types=["error"])
    assert error.data["code"] == "lora_inert"
    assert "learning_rate 1e-30" in error.data["hint"] and "zero learning rate" in error.data["hint"]
    assert "changes nothing" in error.data["message"] and "base weights" in error.data["message"]
    # every delivered file was checked and recorded; the checkpoints are marked failed too
    checked = store.events(job.id, types=["lora.checked"])
    assert [e.data["step"] for e in checked] == [None, 10, 20]
    assert {e.data["code"] for e in checked} == {"lora_inert"}
    assert failed_checkpoints(job.outputs) == [10, 20]
    # nothing packaged, nothing published: no stage past the check started, the bucket is empty
    started = [e.data["stage"] for e in store.events(job.id, types=["stage.started"])]
    assert started[-1] == "check" and "package" not in started and "publish" not in started
    assert job.outputs.bundle is None and job.outputs.published == []
    assert s3.list_objects_v2(Bucket="loras", Prefix=tmp_path.name).get("KeyCount", 0) == 0
    refused = cli("publish", job.id)
    assert refused.code == 2 and "failed" in refused.out + refused.err
    assert s3.list_objects_v2(Bucket="loras", Prefix=tmp_path.name).get("KeyCount", 0) == 0


def test_a_trained_job_passes_the_check_and_is_published(
    tmp_path: Path, cli, s3, s3_endpoint: str  # noqa: F811 - the fixtures
) -> None:
    result = cli("train", write_spec(tmp_path, s3_endpoint))
    assert result.code == 0, result.out + result.err
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.COMPLETED, job.error
    checked = store.events(job.id, types=["lora.checked"])
    assert [(e.data["step"], e.data["code"]) for e in checked] == [(None, "ok"), (10, "ok"), (20, "ok")]
    final = job.outputs.lora_check["final"]
    assert final["live_modules"] == final["modules"] > 0
    assert final["judged_against"].startswith("base weights") and final["largest_update"] > 1e-3
    assert failed_checkpoints(job.outputs) == []
    assert s3.list_objects_v2(Bucket="loras", Prefix=tmp_path.name)["KeyCount"] > 0
