"""musubi-tuner driven end to end through `loraflow train` with its stand-in (same console, same files, same
resume arithmetic): progress, checkpoints and samples in loraflow's layout, and a kill mid-run resumed from
musubi's own state with the step count kept cumulative."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.publish.bundle import verify_bundle
from tests.conftest import EXAMPLES
from tests.publish.test_s3 import s3, s3_endpoint  # noqa: F401 - fixtures

FAMILIES = ("wan", "qwen_image", "flux_kontext", "flux_2")
ENTRIES = {f"{family}_{script}.py": entry for family in FAMILIES for script, entry in (
    ("cache_latents", "cache_latents"), ("cache_text_encoder_outputs", "cache_te"), ("train_network", "train"))}


@pytest.fixture
def musubi_dir(tmp_path: Path) -> Path:
    root = tmp_path / "engines" / "musubi"
    scripts = root / "src" / "musubi_tuner"
    scripts.mkdir(parents=True)
    for script, entry in ENTRIES.items():
        (scripts / script).write_text(f"from loraflow.testing.musubi_standin import main\nmain({entry!r})\n")
    return root


def write_spec(tmp_path: Path, root: Path, steps: int) -> Path:
    spec = {
        "name": "dancer",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "dnc"},
        "base_model": "wan2.1-t2v-1.3b",
        "engine": {"name": "musubi", "options": {"path": str(root)}},
        "training": {"steps": steps, "resolution": [256]},
        "sampling": {"prompts": ["[trigger] dancing"], "every_n_steps": 10, "width": 64, "height": 64},
        "checkpointing": {"every_n_steps": 10, "keep_last": 10},
    }
    path = tmp_path / "wan.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_for(check, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_musubi_job_end_to_end(tmp_path: Path, musubi_dir: Path, cli) -> None:
    result = cli("train", write_spec(tmp_path, musubi_dir, 30))
    assert result.code == 0, result.out + result.err
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.COMPLETED and job.step == 30
    assert sorted(p.name for p in (job.folder / "checkpoints").iterdir()) == ["step-000010", "step-000020",
                                                                             "step-000030"]
    assert (job.folder / "checkpoints" / "step-000010" / "state" / "random_states_0.pkl").is_file()
    assert sorted(p.name for p in (job.folder / "samples").iterdir()) == ["step-000010", "step-000020", "step-000030"]
    with safe_open(str(job.folder / "dancer.safetensors"), "pt") as f:
        assert f.metadata()["loraflow.format"] == "kohya"
        assert all(k.startswith("lora_unet_blocks_") for k in f.keys())  # noqa: SIM118
    assert verify_bundle(Path(job.outputs.bundle)) == []
    phases = [e.data["phase"] for e in store.events(job.id, types=["phase"])]
    assert "caching" in phases and phases.index("caching") < phases.index("training")
    losses = [e.data["loss"] for e in store.events(job.id, types=["progress"])]
    assert len(losses) >= 3 and all(isinstance(v, float) for v in losses)


def test_killed_musubi_resumes_from_its_state_with_cumulative_steps(
    tmp_path: Path, musubi_dir: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUSUBI_STANDIN_STEP_S", "0.05")
    assert cli("train", write_spec(tmp_path, musubi_dir, 60), "--detach").code == 0
    store = Store()
    job = store.list_jobs()[0]
    wait_for(lambda: store.get(job.id).step >= 25)
    pid = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "train"))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300)
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, job.error
    assert job.step == 60
    resumed = store.events(job.id, types=["resumed"])
    at = resumed[0].data["step"] if len(resumed) == 1 else None
    assert at is not None and 20 <= at < 60 and at % 10 == 0, resumed
    runs = sorted(p.name for p in (job.folder / "musubi").iterdir())
    assert runs == ["from-00000000", f"from-{at:08d}"]  # musubi's names restart: each run has its own folder
    synced = sorted(p.name for p in (job.folder / "checkpoints").iterdir())
    assert synced == [f"step-{s:06d}" for s in range(10, 70, 10)]  # cumulative, none overwritten
    steps = [e.data["step"] for e in store.events(job.id, types=["progress"])]
    assert steps[-1] == 60 and min(steps[steps.index(max(s for s in steps if s <= at)):]) > 10


def test_musubi_trains_on_images_and_clips(tmp_path: Path, musubi_dir: Path, cli) -> None:
    import shutil

    data = tmp_path / "mixed"
    shutil.copytree(EXAMPLES / "sample_dataset", data)
    clips = Path(__file__).parent / "fixtures" / "videos"
    for name in ("walk_37f_16fps.mp4", "jump_45f_30fps.mov"):
        shutil.copyfile(clips / name, data / name)
        (data / name).with_suffix(".txt").write_text("dnc walking")
    spec = yaml.safe_load(write_spec(tmp_path, musubi_dir, 12).read_text())
    spec["dataset"]["path"] = str(data)
    spec["engine"]["options"]["target_frames"] = [1, 33]
    spec["sampling"]["every_n_steps"] = 12  # musubi's final round exists only on the cadence
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli("train", path)
    assert result.code == 0, result.out + result.err
    job = Store().list_jobs()[0]
    assert job.state is JobState.COMPLETED and job.step == 12
    prepared = sorted(p.name for p in (job.folder / "dataset").iterdir() if p.suffix in (".mp4", ".mov"))
    assert prepared == ["jump_45f_30fps.mov", "walk_37f_16fps.mp4"]
    config = (job.folder / "engine" / "dataset.toml").read_text()
    assert "video_directory" in config and "image_directory" in config
    videos = job.folder / "engine" / "cache" / "videos-256"
    assert sorted(p.name for p in videos.iterdir()) == [  # one latent cache per target length that fits
        "jump_45f_30fps_00000-001_0256x0256_wan.safetensors",
        "jump_45f_30fps_00000-033_0256x0256_wan.safetensors",
        "jump_45f_30fps_wan_te.safetensors",
        "walk_37f_16fps_00000-001_0256x0256_wan.safetensors",
        "walk_37f_16fps_00000-033_0256x0256_wan.safetensors",
        "walk_37f_16fps_wan_te.safetensors",
    ]


@pytest.mark.timeout(900)  # four musubi launches (each: two caching scripts and the trainer) on a busy machine
def test_wan22_trains_both_experts_as_one_job_resumes_each_after_a_kill_and_delivers_the_pair(
    tmp_path: Path, musubi_dir: Path, cli, monkeypatch: pytest.MonkeyPatch, s3, s3_endpoint: str  # noqa: F811
) -> None:
    """Wan 2.2 A14B: the high-noise expert's musubi run, then the low-noise one's, in one job; a kill in each
    resumes that expert from its own state, the finished high-noise run is not trained again, and the job
    ends with both files as one result: job folder, bundle, card, S3, registry; a checkpoint is a pair from
    the low-noise expert's first save on, and one from before is refused by name."""
    import zipfile

    from loraflow.errors import UserInputError
    from loraflow.layout import PAIR_FILE
    from loraflow.platform.config import PlatformConfig
    from loraflow.platform.registry import register_job
    from loraflow.running.publishing import publish

    monkeypatch.setenv("MUSUBI_STANDIN_STEP_S", "0.1")
    spec = yaml.safe_load(write_spec(tmp_path, musubi_dir, 60).read_text())
    spec["base_model"] = "wan2.2-t2v-a14b"
    spec["training"]["quantize"] = "none"
    spec["checkpointing"] = {"every_n_steps": 5, "keep_last": 20}
    spec["sampling"]["every_n_steps"] = 20
    spec["publish"] = {"targets": [{"type": "s3", "bucket": "loras", "prefix": "p", "endpoint_url": s3_endpoint}]}
    path = tmp_path / "wan22.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli("train", path, "--detach").code == 0
    store = Store()
    job = store.list_jobs()[0]
    for at in (12, 42):  # once in each expert's run (high noise: steps 1-30)
        wait_for(lambda at=at: store.get(job.id).step >= at)
        os.kill(LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "train")), signal.SIGKILL)
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=600)
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, job.error
    assert job.step == 60 and job.total_steps == 60
    resumed = [e.data["step"] for e in store.events(job.id, types=["resumed"])]
    assert len(resumed) == 2 and 10 <= resumed[0] < 30 and 40 <= resumed[1] < 60, resumed
    runs = sorted(p.name for p in (job.folder / "musubi").iterdir())
    assert runs == ["from-00000000", f"from-{resumed[0]:08d}", "from-00000030", f"from-{resumed[1]:08d}"]
    assert not list((job.folder / "musubi" / "from-00000030").glob("dancer_high_noise*"))  # not trained again
    low, high = job.folder / "dancer.safetensors", job.folder / "dancer_high_noise.safetensors"
    with safe_open(str(low), "pt") as a, safe_open(str(high), "pt") as b:
        assert a.metadata()["loraflow.format"] == b.metadata()["loraflow.format"] == "kohya"
        assert set(a.keys()) == set(b.keys()) and all(k.startswith("lora_unet_blocks_") for k in a.keys())  # noqa: SIM118
        assert not (a.get_tensor("lora_unet_blocks_0_self_attn_q.lora_up.weight")
                    == b.get_tensor("lora_unet_blocks_0_self_attn_q.lora_up.weight")).all()
    checkpoints = job.folder / "checkpoints"
    steps = sorted(int(p.name.split("-")[1]) for p in checkpoints.iterdir())
    assert steps == list(range(5, 65, 5))
    assert all((checkpoints / f"step-{s:06d}" / PAIR_FILE).is_file() == (s > 30) for s in steps)
    progress = [e.data["step"] for e in store.events(job.id, types=["progress"])]
    assert progress[-1] == 60 and max(progress) == 60
    assert verify_bundle(Path(job.outputs.bundle)) == []
    with zipfile.ZipFile(job.outputs.bundle) as zf:
        assert {"dancer.safetensors", "dancer_high_noise.safetensors"} <= set(zf.namelist())
        assert zf.read("dancer_high_noise.safetensors") == high.read_bytes()
        card = zf.read("README.md").decode()
    assert "`dancer_high_noise.safetensors` for the high-noise model (timesteps 875-1000" in card
    assert "load_into_transformer_2=True" in card
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="loras")["Contents"]}
    assert {f"p/{job.id}/dancer.safetensors", f"p/{job.id}/dancer_high_noise.safetensors"} <= keys
    files = register_job(store, job, PlatformConfig())["files"]
    assert [f["name"] for f in files] == ["dancer.safetensors", "dancer_high_noise.safetensors"]
    with pytest.raises(UserInputError, match="checkpoint 30 holds only the high-noise expert"):
        publish(store, job.id, 30)
    publish(store, job.id, 35)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="loras")["Contents"]}
    assert {f"p/{job.id}/dancer-step000035.safetensors", f"p/{job.id}/dancer_high_noise-step000035.safetensors"} <= keys


@pytest.mark.parametrize(
    ("model", "arch", "encoder_line", "first_key"),
    [
        ("flux-kontext-dev", "fk", "Encoding with T5 and CLIP text encoders", "lora_unet_double_blocks_0_img_attn_qkv"),
        ("qwen-image-edit-2511", "qie", "Encoding with Qwen2.5-VL", "lora_unet_transformer_blocks_0_attn_to_q"),
    ],
)
def test_edit_pairs_train_on_musubi_in_each_familys_own_layout(
    model: str, arch: str, encoder_line: str, first_key: str, tmp_path: Path, musubi_dir: Path, cli
) -> None:
    """A pair set through musubi's image families on the stand-in: its own scripts, its caches named with its
    architecture, its console, its LoRA layout (which the result check judges), the pairs' samples bundled."""
    import zipfile

    from tests.engines.test_pairs import pair_set

    data = pair_set(tmp_path / "photos", broken=False)
    spec = yaml.safe_load(write_spec(tmp_path, musubi_dir, 10).read_text())
    spec.update(base_model=model, name="edits")
    spec["dataset"] = {"path": str(data), "control": "control", "checks": {"min_images": 4}}
    spec["sampling"] = {"prompts": ["make the square red"], "every_n_steps": 10, "width": 64, "height": 64}
    spec["training"]["quantize"] = "none"
    path = tmp_path / "edit.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli("train", path)
    assert result.code == 0, result.out + result.err
    job = Store().list_jobs()[0]
    assert job.state is JobState.COMPLETED and job.step == 10, job.error
    caches = {p.name for p in (job.folder / "engine" / "cache" / "images-256").iterdir()}
    assert f"a_0256x0256_{arch}.safetensors" in caches and f"a_{arch}_te.safetensors" in caches
    log = (job.folder / "run" / "train.log").read_text()
    assert encoder_line in log and "Load dataset config from" in log
    with safe_open(str(job.folder / "edits.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert f"{first_key}.lora_down.weight" in keys and not any("blocks_0_self_attn" in k for k in keys)
    with zipfile.ZipFile(job.outputs.bundle) as zf:
        assert "samples/controls/0_0.png" in zf.namelist()
