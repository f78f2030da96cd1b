"""A whole job with the approval gate, S3 publishing of a chosen checkpoint, webhooks in order, and a
W&B that fails without failing the job."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.notify.signing import HEADER, verify
from tests.conftest import EXAMPLES
from tests.publish.test_s3 import s3, s3_endpoint  # noqa: F401 - fixtures
from tests.publish.test_webhooks import Receiver

SECRET = "whsec_job_secret"


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "shared-models"))


@pytest.fixture
def broken_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `wandb` package that fails like an unreachable W&B; the runner imports it through PYTHONPATH."""
    pkg = tmp_path / "fakes" / "wandb"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("def init(**kw):\n    raise ConnectionError('api.wandb.ai unreachable')\n")
    # ahead of the PYTHONPATH the tests run under (a worktree's src/), which the runner must still import
    paths = [str(tmp_path / "fakes"), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    return pkg


def test_approval_gate_publishes_the_chosen_checkpoint(
    tmp_path: Path,
    cli,
    s3,  # noqa: F811 - the fixture
    s3_endpoint: str,  # noqa: F811
    broken_wandb: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORAFLOW_WEBHOOK_SECRET", SECRET)
    receiver = Receiver()
    spec = {
        "name": "mascot",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "tiny-flux",
        "training": {"steps": 20},
        "checkpointing": {"every_n_steps": 10, "keep_last": 5},
        "publish": {
            "approval_required": True,
            "targets": [{"type": "s3", "bucket": "loras", "prefix": "users/alice", "endpoint_url": s3_endpoint}],
        },
        "notifications": [{"type": "webhook", "url": receiver.url}],
        "wandb": {"enabled": True, "project": "p"},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    try:
        result = cli("train", path)
        assert result.code == 0, result.out + result.err
        store = Store()
        job = store.list_jobs()[0]
        assert job.state is JobState.AWAITING_APPROVAL
        warnings = [e.data["message"] for e in store.events(job.id, types=["warning"])]
        assert any("W&B disabled" in w and "unreachable" in w for w in warnings)
        approved = cli("jobs", "approve", job.id, "--checkpoint", "10")
        assert approved.code == 0, approved.out + approved.err
        job = store.get(job.id)
        assert job.state is JobState.COMPLETED
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="loras")["Contents"]}
        assert f"users/alice/{job.id}/mascot-step000010.safetensors" in keys
        assert f"users/alice/{job.id}/loraflow-mascot-{job.id}-step000010.zip" in keys
        published = job.outputs.published
        assert published[0]["checkpoint_step"] == 10
        assert cli("publish", job.id, "--checkpoint", "final").code == 0  # later, the final LoRA too
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="loras")["Contents"]}
        assert f"users/alice/{job.id}/mascot.safetensors" in keys
        names = [p["event"] for p, _, _ in receiver.received]
        for _p, body, headers in receiver.received:
            assert verify(SECRET, headers[HEADER], body)
        order = ["job.created", "job.started", "checkpoint.saved", "sample.saved", "job.completed"]
        positions = [names.index(n) for n in order]
        assert positions == sorted(positions), names
        assert names.count("job.created") == 1 and names[-1] == "job.completed"
        assert "job.failed" not in names
        everything = json.dumps([e.to_dict() for e in store.events(job.id)])
        assert SECRET not in everything  # no secret in any event
        assert "X-Amz-Credential" not in everything and "AWSAccessKeyId" not in everything
    finally:
        receiver.close()
