"""Every engine's stand-in made to deliver an all-zero LoRA (what a run whose optimizer never moved the B
matrices saves): the job ends `failed` with lora_inert and a hint, each kept checkpoint is marked failed,
nothing is packaged and the S3 target the spec names receives nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.running.result_check import failed_checkpoints
from loraflow.testing.fal_emulator import FalEmulator
from tests.engines.test_engine_runs import engines_dir, write_spec  # noqa: F401 - fixture
from tests.engines.test_fal import fal  # noqa: F401 - fixture
from tests.engines.test_fal import write_spec as fal_spec
from tests.engines.test_musubi_runs import musubi_dir  # noqa: F401 - fixture
from tests.engines.test_musubi_runs import write_spec as musubi_spec
from tests.publish.test_s3 import s3, s3_endpoint  # noqa: F401 - fixtures


def with_s3(path: Path, endpoint: str) -> Path:
    """The spec with an S3 target under a prefix of its own (moto's buckets outlive one test)."""
    spec = yaml.safe_load(path.read_text())
    prefix = f"inert-{path.parent.name}"
    spec["publish"] = {"targets": [{"type": "s3", "bucket": "loras", "prefix": prefix, "endpoint_url": endpoint}]}
    path.write_text(yaml.safe_dump(spec))
    return path


def assert_inert_and_unpublished(cli, s3, checkpoints: list[int]) -> None:  # noqa: F811 - the fixture
    """Failed with lora_inert; nothing packaged; nothing under the job's S3 prefix."""
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.FAILED, job.error
    (error,) = store.events(job.id, types=["error"])
    assert error.data["code"] == "lora_inert", error.data
    assert "changes nothing" in error.data["message"] and "B (up) matrix is still zero" in error.data["hint"]
    assert failed_checkpoints(job.outputs) == checkpoints
    started = [e.data["stage"] for e in store.events(job.id, types=["stage.started"])]
    assert "check" in started and "package" not in started and "publish" not in started
    assert job.outputs.bundle is None and job.outputs.published == []
    prefix = job.train_spec.publish.targets[0].prefix
    assert s3.list_objects_v2(Bucket="loras", Prefix=prefix).get("KeyCount", 0) == 0
    assert cli("publish", job.id).code == 2


@pytest.mark.parametrize("engine", ["ai-toolkit", "kohya"])
def test_aitoolkit_and_kohya_all_zero_loras_fail_inert(
    engine: str, tmp_path: Path, engines_dir: Path, cli, s3, s3_endpoint: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AITK_STANDIN_INERT", "1")
    monkeypatch.setenv("KOHYA_STANDIN_INERT", "1")
    result = cli("train", with_s3(write_spec(tmp_path, engines_dir, engine, steps=20), s3_endpoint))
    assert result.code != 0
    assert_inert_and_unpublished(cli, s3, [11] if engine == "ai-toolkit" else [10, 20])


def test_musubi_all_zero_lora_fails_inert(
    tmp_path: Path, musubi_dir: Path, cli, s3, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv("MUSUBI_STANDIN_INERT", "1")
    result = cli("train", with_s3(musubi_spec(tmp_path, musubi_dir, 20), s3_endpoint))
    assert result.code != 0
    assert_inert_and_unpublished(cli, s3, [10, 20])


def test_fal_all_zero_lora_fails_inert(
    tmp_path: Path, fal: FalEmulator, cli, s3, s3_endpoint: str  # noqa: F811
) -> None:
    fal.inert = True
    result = cli("train", with_s3(fal_spec(tmp_path), s3_endpoint))
    assert result.code != 0
    assert_inert_and_unpublished(cli, s3, [])
