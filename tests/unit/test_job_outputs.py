"""A job's outputs as named fields over the `artifacts` column: old rows still read, nothing stored is dropped."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from loraflow.jobs.outputs import JobOutputs
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.spec import parse_spec

SPEC = parse_spec({"name": "j", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux"})

# A completed rented job's column as the store wrote it before the fields had names (add_artifacts).
OLD_ROW = {
    "trust": "operator",
    "force_budget": True,
    "dataset_hash": "ab" * 32,
    "images": 12,
    "leases": [{"provider": "vastai", "instance_id": 7, "price_usd_h": 0.5, "started_at": 10.0, "ended_at": 3610.0}],
    "lora": "/jobs/j/output/j.safetensors",
    "bundle": "/jobs/j/bundle/j.zip",
    "approved_checkpoint": 20,
    "published": [{"type": "s3", "url": "s3://loras/j.zip", "checkpoint_step": 20}],
    "published_bundle": "/jobs/j/bundle/j-step000020.zip",
    "check": "allow",
    "swept": True,
}


def write_column(store: Store, job_id: str, value: dict | None) -> None:
    with store.session() as s, s.begin():
        s.execute(text("UPDATE jobs SET artifacts = :v WHERE id = :id"), {"v": json.dumps(value), "id": job_id})


def read_column(store: Store, job_id: str) -> dict:
    with store.reader() as s:
        return json.loads(s.execute(text("SELECT artifacts FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one())


def test_a_row_written_in_the_old_shape_reads_as_named_fields() -> None:
    store = Store()
    job = store.create_job(SPEC)
    write_column(store, job.id, OLD_ROW)
    out = store.get(job.id).outputs
    assert out.bundle == "/jobs/j/bundle/j.zip" and out.lora == "/jobs/j/output/j.safetensors"
    assert out.dataset_hash == "ab" * 32 and out.images == 12
    assert out.leases[0]["price_usd_h"] == 0.5 and out.published[0]["checkpoint_step"] == 20
    assert out.approved_checkpoint == 20 and out.published_bundle.endswith("-step000020.zip")
    assert out.trust == "operator" and out.force_budget is True and out.check == "allow" and out.swept is True
    assert store.get(job.id).to_dict()["artifacts"] == OLD_ROW  # the API and webhooks see the same object


def test_an_empty_or_null_column_reads_as_defaults() -> None:
    store = Store()
    job = store.create_job(SPEC)
    assert store.get(job.id).outputs == JobOutputs()
    write_column(store, job.id, None)  # JSON null
    out = store.get(job.id).outputs
    assert out.bundle is None and out.leases == [] and out.force_budget is False and out.check is None
    assert store.get(job.id).to_dict()["artifacts"] == {}


def test_writes_merge_and_keep_what_this_version_does_not_know() -> None:
    store = Store()
    job = store.create_job(SPEC)
    write_column(store, job.id, {"images": 3, "from_a_later_version": {"x": 1}, "check": "maybe"})
    assert store.get(job.id).outputs.check is None  # unreadable: left out of the fields, the job still loads
    store.update_outputs(job.id, bundle="/b.zip", images=4)
    assert read_column(store, job.id) == {
        "images": 4,
        "from_a_later_version": {"x": 1},
        "check": "maybe",
        "bundle": "/b.zip",
    }


def test_a_misspelt_or_mistyped_field_is_refused_before_anything_is_written() -> None:
    store = Store()
    job = store.create_job(SPEC)
    store.update_outputs(job.id, lora="/l.safetensors")
    with pytest.raises(TypeError, match="no field budle"):
        store.update_outputs(job.id, budle="/b.zip", lora="/other.safetensors")
    with pytest.raises(ValidationError):
        store.update_outputs(job.id, check="perhaps")
    assert read_column(store, job.id) == {"lora": "/l.safetensors"}


def test_the_trust_the_submit_door_records_decides_the_webhook_policy() -> None:
    from loraflow.notify.addresses import is_service_job

    store = Store()
    alice, local = store.create_job(SPEC, owner="alice"), store.create_job(SPEC)
    assert is_service_job(store.get(alice.id)) and not is_service_job(store.get(local.id))  # by owner
    store.update_outputs(alice.id, trust="operator")
    store.update_outputs(local.id, trust="service")
    assert not is_service_job(store.get(alice.id)) and is_service_job(store.get(local.id))


def test_a_checkpoint_that_failed_the_result_check_is_never_published() -> None:
    from loraflow.errors import Refused
    from loraflow.running.publishing import publish

    spec = parse_spec({**SPEC.to_dict(), "publish": {"targets": [{"type": "s3", "bucket": "b"}]}})
    store = Store()
    job = store.create_job(spec)
    for state in (JobState.PREPARING, JobState.PROVISIONING, JobState.TRAINING, JobState.FINISHING,
                  JobState.COMPLETED):
        store.transition(job.id, state)
    store.update_outputs(job.id, lora_check={"final": None, "checkpoints": {"10": "lora_inert"},
                                             "failed_checkpoints": [10]})
    with pytest.raises(Refused, match=r"checkpoint 10 .* failed the result check"):
        publish(store, job.id, checkpoint=10)
