"""The effect check and scorecard of a job trained on a leased host run on that host, before it is let go
(issue 27): the held-out images go there (with the builtin engine's training parcels: its trainer runs the
check after training, with the model loaded), the host's own LoRA files are used, the scorecard and renders
come back, and a LoRA the host measures as changing nothing fails the job `lora_inert`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from tests.integration.test_local_jobs import only_job
from tests.integration.test_scorecard_job import twelve_images
from tests.remote.conftest import Vast, dump, events_of, ssh_compute
from tests.remote.test_vast_jobs import remote_spec


@pytest.mark.timeout(1200)  # a whole job and its check in a process on the "host", on a busy machine
def test_a_job_on_an_ssh_host_is_scored_on_that_host(tmp_path: Path, cli, sshd) -> None:
    path = remote_spec(tmp_path, steps=20, every=10)
    data = yaml.safe_load(path.read_text())
    data["dataset"]["path"] = str(twelve_images(tmp_path))
    data.pop("evaluation")  # the defaults: checked
    data["compute"] = ssh_compute(sshd)
    path.write_text(yaml.safe_dump(data))
    result = cli("train", path)
    assert result.code == 0, result.out + result.err
    store = Store()
    job = only_job(store)
    assert job.state is JobState.COMPLETED, dump(job.to_dict())
    summary = job.outputs.scorecard
    assert summary is not None, dump(events_of(store, job.id, "warning"))
    assert summary["effect_check"]["passed"] and [r["step"] for r in summary["rows"]] == [10, 20]
    assert summary["reference"] == "holdout" and summary["reference_images"] == 1 and len(job.outputs.holdout) == 1
    # it ran there: the host's job folder has the config with the host's paths, the held-out image and the card
    there = sshd.home / "work" / job.id / "evaluation"
    ran = json.loads((there / "config.json").read_text())
    assert ran["out_dir"] == str(there) and ran["reference_dir"] == str(there / "holdout")
    assert (there / "holdout" / job.outputs.holdout[0]).is_file() and (there / "scorecard.json").is_file()
    # with the host's own LoRA files (the same bytes the structural check judged here), none sent again
    assert {lora["path"] for lora in ran["loras"]} == {
        str(sshd.home / "work" / job.id / "checkpoints" / "step-000010" / "lora.safetensors"),
        str(sshd.home / "work" / job.id / "remote.safetensors"),
    }
    assert not (there / "loras").exists()
    # and came back: the scorecard, its renders and the log, here
    here = job.folder / "evaluation"
    assert json.loads((here / "scorecard.json").read_text())["best"] == summary["best"]
    assert (here / "samples" / "final" / "00.png").is_file() and (here / "evaluation.log").is_file()
    types = [e.type for e in store.events(job.id)]
    assert "result.effect" in types and types.index("result.scored") < types.index("job.completed")
    # by the builtin trainer's own process there, after training, with the model it had loaded (no second load)
    assert summary["timings"]["model_already_loaded"] and (here / "config.host.json").is_file()


@pytest.mark.timeout(1200)
def test_a_lora_the_rented_host_finds_inert_fails_the_job_and_the_host_is_let_go(
    tmp_path: Path, cli, vast: Vast
) -> None:
    # the tiny model's 20-step LoRA moves its renders by ~0.1: a floor of 5 makes it "change nothing"
    result = cli("train", remote_spec(tmp_path, steps=20, every=10, evaluation={"min_effect": 5.0}))
    assert result.code != 0
    store = Store()
    job = only_job(store)
    assert job.state is JobState.FAILED, dump(job.to_dict())
    (error,) = store.events(job.id, types=["error"])
    assert error.data["code"] == "lora_inert" and "barely changes the output" in error.data["message"]
    effects = events_of(store, job.id, "result.effect")
    assert effects and not any(e["ok"] for e in effects)
    types = [e.type for e in store.events(job.id)]
    assert types.index("result.effect") < types.index("host.released")  # measured before the host went
    assert job.lease is None and vast.instances() == {}
    assert not job.outputs.published
