"""Retention on the folder a real tiny job leaves: what gc takes is what the job no longer needs
(its bundle still verifies and can be rebuilt afterwards)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from loraflow.jobs.store import Store
from loraflow.publish.bundle import verify_bundle
from tests.conftest import EXAMPLES


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "shared-models"))


def test_gc_after_a_real_tiny_job(tmp_path: Path, cli) -> None:
    spec = {
        "name": "kept",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "tiny-flux",
        "training": {"steps": 20},
        "sampling": {"prompts": ["[trigger] on the moon"], "every_n_steps": 0},
        "checkpointing": {"every_n_steps": 10, "keep_last": 5},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = cli("train", tmp_path / "spec.yaml")
    assert result.code == 0, result.out + result.err
    store = Store()
    [job] = store.list_jobs()
    folder = job.folder
    assert (folder / "cache").is_dir() and (folder / "checkpoints" / "step-000010").is_dir()
    old = time.time() - 30 * 86400
    for p in [folder, *folder.rglob("*")]:
        os.utime(p, (old, old), follow_symlinks=False)

    dry = json.loads(cli("gc", "--dry-run", "--json").out)
    [row] = dry["jobs"]
    assert row["job_id"] == job.id and row["bytes"] > 0 and "cache" in row["paths"]
    assert "checkpoints/step-000010" in row["paths"]
    assert (folder / "cache").is_dir()  # nothing removed yet

    done = cli("gc")
    assert done.code == 0 and "freed" in done.out
    assert not (folder / "cache").exists() and not (folder / "checkpoints" / "step-000010").exists()
    assert (folder / "kept.safetensors").is_file() and list((folder / "run").glob("*.log"))
    bundle = Path(store.get(job.id).outputs.bundle)
    assert bundle.is_file() and verify_bundle(bundle) == []
    rebuilt = cli("bundle", job.id)  # everything a bundle needs is still there
    assert rebuilt.code == 0, rebuilt.err
    [event] = [e.data for e in store.events(job.id, types=["gc.removed"])]
    assert event["bytes"] == row["bytes"] and set(event["paths"]) == set(row["paths"])
