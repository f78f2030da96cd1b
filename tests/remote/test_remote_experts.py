"""Wan 2.2 A14B's two experts on a leased host: ai-toolkit's one run and musubi's two runs, each delivering
both files as one result (job folder, bundle, registry), over a real OpenSSH server on loopback, and a musubi
pair moved to a new Vast host mid-pair resuming the right expert from the newest checkpoint copied back."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import yaml
from safetensors import safe_open

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.publish.bundle import verify_bundle
from tests.conftest import EXAMPLES
from tests.remote.conftest import Sshd, dump, ssh_compute


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
