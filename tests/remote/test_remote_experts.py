"""Wan 2.2 A14B's two experts on a leased host: ai-toolkit's one run and musubi's two runs, each delivering
both files as one result (job folder, bundle, registry), over a real OpenSSH server on loopback, and a musubi
pair moved to a new Vast host mid-pair resuming the right expert from the newest checkpoint copied back."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors import safe_open

from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import PAIR_FILE
from loraflow.publish.bundle import verify_bundle
from tests.conftest import EXAMPLES
from tests.integration.test_local_jobs import wait_for
from tests.publish.test_s3 import s3, s3_endpoint  # noqa: F401 - fixtures
from tests.remote.conftest import Sshd, Vast, dump, events_of, ssh_compute


def aitk_engine(tmp_path: Path) -> Path:
    """ai-toolkit's checkout on the host: its `run.py` is the stand-in (the host is this machine)."""
    engine = tmp_path / "engines" / "ai-toolkit"
    engine.mkdir(parents=True)
    (engine / "run.py").write_text("from loraflow.testing.aitoolkit_standin import main\nmain()\n")
    return engine


def wan22_spec(tmp_path: Path, engine: str, root: Path, compute: dict[str, Any], steps: int, **extra: Any) -> Path:
    spec = {
        "name": "dancer", "base_model": "wan2.2-t2v-a14b",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "dnc"},
        "engine": {"name": engine, "options": {"path": str(root)}},
        "training": {"steps": steps, "resolution": [256], **({"quantize": "none"} if engine == "musubi" else {})},
        "sampling": {"every_n_steps": 0},
        "checkpointing": {"every_n_steps": 5, "keep_last": 20},
        "compute": compute,
        # the effect check on the host has its own tests (test_remote_scoring.py); the structural check runs here
        "evaluation": {"enabled": False},
        **extra,
    }  # fmt: skip
    path = tmp_path / f"{engine}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def assert_pair_delivered(job: Any, store: Store) -> None:
    """Both experts' files in the job folder and the bundle, told apart, each checked."""
    low, high = job.folder / "dancer.safetensors", job.folder / "dancer_high_noise.safetensors"
    with safe_open(str(low), "pt") as a, safe_open(str(high), "pt") as b:
        assert list(a.keys()) and list(b.keys())
    assert low.read_bytes() != high.read_bytes()
    assert verify_bundle(Path(job.outputs.bundle)) == []
    with zipfile.ZipFile(job.outputs.bundle) as zf:
        assert {"dancer.safetensors", "dancer_high_noise.safetensors"} <= set(zf.namelist())
        assert zf.read("dancer_high_noise.safetensors") == high.read_bytes()
        assert "dancer_high_noise.safetensors" in zf.read("README.md").decode()
    from loraflow.platform.config import PlatformConfig
    from loraflow.platform.registry import register_job

    files = register_job(store, job, PlatformConfig())["files"]
    assert [f["name"] for f in files] == ["dancer.safetensors", "dancer_high_noise.safetensors"]


def test_aitoolkit_wan22_on_an_ssh_host_brings_back_both_experts(tmp_path: Path, cli, sshd: Sshd) -> None:
    """ai-toolkit writes `<name>_high_noise` and `<name>_low_noise` (wan22_14b_model.save_lora): both come back
    from the host, and the job's result is the pair."""
    path = wan22_spec(tmp_path, "ai-toolkit", aitk_engine(tmp_path), ssh_compute(sshd), 12)
    result = cli("train", path)
    assert result.code == 0, result.out + result.err
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.COMPLETED and job.step == 12, dump(job.to_dict())
    assert str(sshd.home) not in str(job.outputs.lora)  # the result is this machine's copy
    assert_pair_delivered(job, store)
    assert job.lease is None


def musubi_engine(tmp_path: Path, step_s: float, inert: str = "", hold_at: int = 0) -> Path:
    """musubi-tuner's checkout on the host, its scripts the stand-in's (the host's environment is sshd's, not
    the test's: the stand-in's pace and faults are set in the scripts)."""
    root = tmp_path / "engines" / "musubi"
    scripts = root / "src" / "musubi_tuner"
    scripts.mkdir(parents=True)
    for script, entry in (("cache_latents", "cache_latents"), ("cache_text_encoder_outputs", "cache_te"),
                          ("train_network", "train")):
        (scripts / f"wan_{script}.py").write_text(
            f"import os\nos.environ['MUSUBI_STANDIN_STEP_S'] = '{step_s}'\n"
            f"os.environ['MUSUBI_STANDIN_INERT'] = '{inert}'\n"
            f"os.environ['MUSUBI_STANDIN_HOLD_AT'] = '{hold_at}'\n"
            f"os.environ['MUSUBI_STANDIN_RELEASE'] = {str(tmp_path / 'release')!r}\n"
            f"from loraflow.testing.musubi_standin import main\nmain({entry!r})\n"
        )
    return root


def assert_pair_checkpoints(job: Any, split: int, total: int) -> None:
    """Each checkpoint copied back while training, counted across both runs; a pair from the low-noise
    expert's first save on."""
    checkpoints = job.folder / "checkpoints"
    steps = sorted(int(p.name.split("-")[1]) for p in checkpoints.iterdir() if p.name.startswith("step-"))
    assert steps == list(range(5, total + 5, 5)), steps
    assert all((checkpoints / f"step-{s:06d}" / PAIR_FILE).is_file() == (s > split) for s in steps)


def test_musubi_wan22_pair_trains_on_an_ssh_host_as_one_job(
    tmp_path: Path, cli, sshd: Sshd, s3, s3_endpoint: str  # noqa: F811 - the fixtures
) -> None:
    """Both experts' musubi runs on the host, one after the other with their own timesteps, counted as one
    job's steps; checkpoints copied back while each trains; both files back and delivered as one result
    (job folder, bundle, card, registry, S3)."""
    target = {"type": "s3", "bucket": "loras", "prefix": "p", "endpoint_url": s3_endpoint}
    path = wan22_spec(tmp_path, "musubi", musubi_engine(tmp_path, 0.02), ssh_compute(sshd), 20,
                      publish={"targets": [target]})
    result = cli("train", path)
    assert result.code == 0, result.out + result.err
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.COMPLETED and job.step == 20 and job.total_steps == 20, dump(job.to_dict())
    log = (sshd.home / "work" / job.id / "run" / "train.log").read_text()  # the host's
    high = log.index("the high-noise expert (timesteps 875-1000)")
    assert high < log.index("the low-noise expert (timesteps 0-875)")
    assert "from step 10 of 20: the low-noise expert" in log
    launched = events_of(store, job.id, "train.launched")
    assert len(launched) == 2  # the high-noise run, then the low-noise one at once
    progress = [d["step"] for d in events_of(store, job.id, "progress")]
    assert progress[-1] == 20 and max(progress) == 20 and any(10 < s < 20 for s in progress)
    assert_pair_checkpoints(job, 10, 20)
    synced = events_of(store, job.id, "checkpoint.synced")
    assert sorted(d["step"] for d in synced) == [5, 10, 15, 20]
    # the runs' own folders are this machine's copy of the host's: what each launch was decided from
    mine = sorted(p.name for p in (job.folder / "musubi").iterdir())
    assert mine == ["from-00000000", "from-00000010"]
    assert (job.folder / "musubi" / "from-00000000" / "dancer_high_noise.safetensors").is_file()
    assert_pair_delivered(job, store)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="loras")["Contents"]}
    assert {f"p/{job.id}/dancer.safetensors", f"p/{job.id}/dancer_high_noise.safetensors"} <= keys
    assert job.lease is None


def test_a_pair_whose_high_noise_expert_learned_nothing_fails_the_check_by_that_file(
    tmp_path: Path, cli, sshd: Sshd
) -> None:
    """The structural check judges both files of the pair, the final ones and each checkpoint's: a high-noise
    expert whose LoRA changes nothing fails the job by that file's name, though the low-noise one is fine."""
    from loraflow.running.result_check import failed_checkpoints

    path = wan22_spec(tmp_path, "musubi", musubi_engine(tmp_path, 0.02, inert="high"), ssh_compute(sshd), 20)
    assert cli("train", path).code != 0
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.FAILED and job.step == 20, dump(job.to_dict())
    (error,) = events_of(store, job.id, "error")
    assert error["code"] == "lora_inert" and error["message"].startswith("dancer_high_noise.safetensors: ")
    checked = {(d["step"], d["file"]): d["code"] for d in events_of(store, job.id, "lora.checked")}
    assert checked[(None, "dancer.safetensors")] == "ok"
    assert checked[(None, "dancer_high_noise.safetensors")] == "lora_inert"
    assert checked[(15, f"checkpoints/step-000015/{PAIR_FILE}")] == "lora_inert"
    assert checked[(15, "checkpoints/step-000015/lora.safetensors")] == "ok"
    assert failed_checkpoints(store.get(job.id).outputs) == [5, 10, 15, 20]  # high-noise alone, then pairs


@pytest.mark.timeout(900)  # three musubi launches on two rented hosts on a busy machine
def test_musubi_wan22_pair_moves_to_a_new_vast_host_and_resumes_the_low_noise_expert(
    tmp_path: Path, cli, vast: Vast
) -> None:
    """The host is lost while the low-noise expert trains: the new host is given the high-noise expert's
    finished file and the low-noise expert's newest state copied back, and resumes that expert from it (the
    high-noise one is never trained again); the job ends with the pair."""
    compute = {"provider": "vastai", "python": sys.executable, "setup": "", "max_retries": 2}
    path = wan22_spec(tmp_path, "musubi", musubi_engine(tmp_path, 0.15), compute, 60)
    result = cli("train", "--detach", path)
    assert result.code == 0, result.out + result.err
    store = Store()
    job = store.list_jobs()[0]
    wait_for(lambda: any(d["step"] >= 40 for d in events_of(store, job.id, "checkpoint.synced")),
             timeout=400, what="a low-noise checkpoint copied back")
    first = store.get(job.id).lease["instance_id"]
    vast.admin(f"instances/{first}/fail", {"kind": "gone"})  # its disk goes with it
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=400, what="the job to end")
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, dump(job.to_dict()) + dump([e.data for e in store.events(job.id)][-20:])
    assert job.step == 60 and len(job.outputs.leases) == 2 and len(events_of(store, job.id, "host.lost")) == 1
    resumed = [d["step"] for d in events_of(store, job.id, "resumed")]
    assert len(resumed) == 1 and 40 <= resumed[0] < 60, resumed  # the low-noise expert, from its own state
    messages = [d.get("message", "") for d in events_of(store, job.id, "log")]
    sent = [m for m in messages if m.startswith("sending ")]
    assert len(sent) == 1 and "dancer_high_noise" in sent[0] and "dancer-step" in sent[0], messages
    assert sum("the low-noise expert trains next" in m for m in messages) == 1  # on the first host only
    mine = sorted(p.name for p in (job.folder / "musubi").iterdir())
    assert mine == ["from-00000000", "from-00000030", f"from-{resumed[0]:08d}"], mine
    assert not list((job.folder / "musubi" / f"from-{resumed[0]:08d}").glob("dancer_high_noise*"))
    assert (job.folder / "musubi" / f"from-{resumed[0]:08d}" / "dancer.safetensors").is_file()
    assert_pair_checkpoints(job, 30, 60)
    assert_pair_delivered(job, store)
    assert vast.instances() == {}


@pytest.mark.timeout(900)
def test_musubi_wan22_pair_lost_in_its_high_noise_run_resumes_that_expert_on_a_new_vast_host(
    tmp_path: Path, cli, vast: Vast
) -> None:
    """The host is lost while the high-noise expert trains: the new host is sent that expert's newest state
    (no high-noise file yet, so nothing says the low-noise expert is next), resumes the high-noise run from it,
    then trains the low-noise expert; the job ends with the pair."""
    compute = {"provider": "vastai", "python": sys.executable, "setup": "", "max_retries": 2}
    # The high-noise run holds at step 10 until the host is lost: the loss lands in that run on any machine.
    path = wan22_spec(tmp_path, "musubi", musubi_engine(tmp_path, 0.05, hold_at=10), compute, 40)
    assert cli("train", "--detach", path).code == 0
    store = Store()
    job = store.list_jobs()[0]
    wait_for(lambda: any(d["step"] >= 10 for d in events_of(store, job.id, "checkpoint.synced")),
             timeout=400, what="the high-noise checkpoint of step 10 copied back (the run holds there)")
    first = store.get(job.id).lease["instance_id"]
    lost_at = store.get(job.id).step
    vast.admin(f"instances/{first}/fail", {"kind": "gone"})
    (tmp_path / "release").touch()  # for the new host's run, which passes step 10 again if it resumes from 5
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=400, what="the job to end")
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, dump(job.to_dict()) + dump([e.data for e in store.events(job.id)][-20:])
    assert lost_at < 20, "the host was to be lost in the high-noise run"
    resumed = [d["step"] for d in events_of(store, job.id, "resumed")]
    assert len(resumed) == 1 and 5 <= resumed[0] < 20, resumed  # the high-noise expert, from its own state
    messages = [d.get("message", "") for d in events_of(store, job.id, "log")]
    sent = [m for m in messages if m.startswith("sending ")]
    assert len(sent) == 1 and "dancer_high_noise-step" in sent[0] and "-state" in sent[0], messages
    mine = sorted(p.name for p in (job.folder / "musubi").iterdir())
    assert mine == ["from-00000000", f"from-{resumed[0]:08d}", "from-00000020"], mine
    assert (job.folder / "musubi" / f"from-{resumed[0]:08d}" / "dancer_high_noise.safetensors").is_file()
    assert_pair_checkpoints(job, 20, 40)
    assert_pair_delivered(job, store)
    assert vast.instances() == {}


def test_a_worker_following_the_pair_copies_each_experts_checkpoints_back_while_it_trains(
    tmp_path: Path, sshd: Sshd
) -> None:
    """Under `loraflow worker`, the trainer is followed by the worker's event loop, not its runner: musubi's
    run folders are copied back from there too, so each expert's checkpoints arrive while it trains; the
    runner takes the high-noise run's exit back, starts the low-noise run at once, and hands it over again."""
    from loraflow.running.worker import Worker
    from loraflow.spec import load_spec

    path = wan22_spec(tmp_path, "musubi", musubi_engine(tmp_path, 0.5), ssh_compute(sshd), 40)
    store = Store()
    job = store.create_job(load_spec(path))
    worker = Worker(store, slots=1, lease_s=30).start(poll_s=0.3)
    try:
        wait_for(lambda: store.get(job.id).state is JobState.COMPLETED, timeout=400, what="the job to complete")
    finally:
        worker.stop()
    job = store.get(job.id)
    assert job.step == 40, dump(job.to_dict())
    events = store.events(job.id)
    windows, start = [], None
    for e in events:
        if e.type == "follower.adopted":
            start = e.seq
        elif e.type == "follower.released" and start is not None:
            windows.append((start, e.seq))
            start = None
    assert len(windows) == 2 and len(events_of(store, job.id, "train.launched")) == 2  # one per expert's run
    copied = [(e.seq, e.data["step"]) for e in events if e.type == "checkpoint.synced"]
    for (begin, end), expert in zip(windows, ((5, 10, 15), (25, 30, 35)), strict=True):
        while_followed = {step for seq, step in copied if begin < seq < end}
        assert while_followed & set(expert), (expert, copied, windows)
    assert_pair_checkpoints(job, 20, 40)
    assert_pair_delivered(job, store)
