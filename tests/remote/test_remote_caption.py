"""Captioning as a stage on the remote host: images sent once, captions come back, originals untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from loraflow.dataset.manifest import read_manifest
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.testing.tiny_wd14 import build_tiny_wd14
from tests.conftest import EXAMPLES
from tests.integration.test_local_jobs import only_job
from tests.remote.conftest import Sshd, dump, events_of
from tests.remote.test_follower import ssh_spec
from tests.unit.imagekit import snapshot


def test_remote_job_captions_on_the_host_before_training(tmp_path: Path, cli, sshd: Sshd) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(EXAMPLES / "sample_dataset", photos)
    for cap in ("mascot_01.txt", "mascot_02.txt"):
        (photos / cap).unlink()
    before = snapshot(photos)
    (tmp_path / "job").mkdir()
    path = ssh_spec(tmp_path, sshd, "job", steps=10)
    data = yaml.safe_load(path.read_text())
    data["dataset"]["path"] = str(photos)
    data["dataset"]["captions"] = {
        "backend": "wd14",
        "model": str(build_tiny_wd14(tmp_path / "wd14")),
        "general_threshold": 0.3,
        "character_threshold": 0.5,
    }
    path.write_text(yaml.safe_dump(data))
    result = cli("train", path)
    assert result.code == 0, result.out + result.err
    store = Store()
    job = only_job(store)
    assert job.state is JobState.COMPLETED, dump(job.to_dict())
    started = events_of(store, job.id, "caption.started")
    assert started == [{"backend": "wd14", "images": 2, "where": "host"}]
    assert events_of(store, job.id, "caption.progress")[-1] == {"done": 2, "total": 2}  # live, from the host
    remote = sshd.home / "job" / job.id
    assert (remote / "run" / "caption.log").exists()  # the captioner ran there
    assert (remote / "captioner" / "model.onnx").exists()  # the local model folder travelled with the job
    # The captions came back into the job's dataset copy and manifest, trigger first...
    manifest = read_manifest(job.folder / "dataset")
    files = {f["source"]: f for f in manifest["files"]}
    for source in ("mascot_01.jpg", "mascot_02.jpg"):
        assert files[source]["caption_source"] == "captioner:wd14"
        assert files[source]["caption"].startswith("lfx, ")
    assert files["mascot_00.jpg"]["caption_source"] == "file"
    assert job.outputs.dataset_hash == manifest["dataset_hash"]
    # ...the host's copy trained on the same captions, and the user's folder was never written.
    name = Path(files["mascot_01.jpg"]["name"]).with_suffix(".txt").name
    assert (remote / "dataset" / name).read_text() == (job.folder / "dataset" / name).read_text()
    assert snapshot(photos) == before
    assert events_of(store, job.id, "caption.completed") == [
        {"backend": "wd14", "images": 2, "cached": 0, "where": "host"}
    ]
    # The same images again (a retried or repeated job): captions from the cache, no captioner run.
    assert cli("train", path).code == 0
    again = next(j for j in store.list_jobs() if j.id != job.id)
    assert events_of(store, again.id, "caption.started") == []
    assert events_of(store, again.id, "caption.completed")[0]["cached"] == 2
    assert not (sshd.home / "job" / again.id / "run" / "caption.log").exists()
    assert read_manifest(again.folder / "dataset")["dataset_hash"] == manifest["dataset_hash"]


def test_a_captioner_failing_on_the_host_is_one_clear_error(tmp_path: Path, cli, sshd: Sshd) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(EXAMPLES / "sample_dataset", photos)
    (photos / "mascot_01.txt").unlink()
    broken = tmp_path / "broken-wd14"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    (broken / "selected_tags.csv").write_text("tag_id,name,category,count\n")
    (tmp_path / "job").mkdir()
    path = ssh_spec(tmp_path, sshd, "job", steps=10)
    data = yaml.safe_load(path.read_text())
    data["dataset"]["path"] = str(photos)
    data["dataset"]["captions"] = {"backend": "wd14", "model": str(broken)}
    path.write_text(yaml.safe_dump(data))
    result = cli("train", path)
    assert result.code != 0
    store = Store()
    job = only_job(store)
    assert job.state is JobState.FAILED
    error = events_of(store, job.id, "error")[-1]
    assert "the wd14 captioner failed on the host" in error["message"], error
    manifest = read_manifest(job.folder / "dataset")  # left as prepared: no half-written captions
    assert {f["caption_source"] for f in manifest["files"]} == {"file", "trigger"}
    assert not (photos / "mascot_01.txt").exists() and job.lease is None  # originals untouched, host let go
