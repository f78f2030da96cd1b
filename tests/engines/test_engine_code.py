"""What loraflow renders, judged by the engines' own code. musubi-tuner: each family's argparse parser reads
every training argument (an unknown flag or a value outside its choices is refused), and its dataset config
code (voluptuous schema + the dataset parameter dataclasses) reads every dataset key. ai-toolkit: every key of
each block is one its config class reads, the classes are built from the blocks, the arch is a model class's.

Needs LORAFLOW_MUSUBI_DIR / LORAFLOW_AITOOLKIT_DIR: checkouts (loraflow renders for 30c658c4 / 27a03a91); their
GPU stacks are not needed (loraflow.testing.engine_imports stubs them). Each part is skipped without its one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraflow import catalog
from loraflow.engines.aitoolkit import AitkEngine
from loraflow.engines.musubi import MusubiEngine
from loraflow.layout import JobLayout
from loraflow.spec import parse_spec

MUSUBI = Path(os.environ.get("LORAFLOW_MUSUBI_DIR", "/nonexistent"))
AITK = Path(os.environ.get("LORAFLOW_AITOOLKIT_DIR", "/nonexistent"))
needs_musubi = pytest.mark.skipif(
    not (MUSUBI / "src" / "musubi_tuner" / "hv_train_network.py").is_file(),
    reason="set LORAFLOW_MUSUBI_DIR to a musubi-tuner checkout to check rendered files with its own parsers",
)
needs_aitk = pytest.mark.skipif(
    not (AITK / "toolkit" / "config_modules.py").is_file(),
    reason="set LORAFLOW_AITOOLKIT_DIR to an ai-toolkit checkout to check rendered configs with its config classes",
)
ARCHITECTURE = {  # musubi's dataset/architectures.py short names
    "flux2-dev": "f2d", "flux2-klein-base-4b": "f2k4b", "flux2-klein-base-9b": "f2k9b", "flux-kontext-dev": "fk",
    "qwen-image-edit-2509": "qie", "qwen-image-edit-2511": "qie", "wan2.1-t2v-1.3b": "wan", "wan2.1-i2v-14b": "wan",
    "wan2.2-t2v-a14b": "wan", "wan2.2-i2v-a14b": "wan",
}


def judge(model: str, tmp_path: Path, args_file: str = "args.json", **sections: dict) -> dict:
    raw: dict = {"name": "m", "base_model": model, "engine": "musubi",
                 "dataset": {"path": "/data", "trigger_word": "tk"}, **sections}
    if catalog.get_base_model(model).controls and not catalog.get_base_model(model).control_optional:
        raw["dataset"]["control"] = "control"
    files = MusubiEngine().render(parse_spec(raw), JobLayout(str(tmp_path / "job")), "j", "x")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(MUSUBI / "src"), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "loraflow.testing.musubi_check", str(tmp_path / args_file),
         str(tmp_path / "dataset.toml"), ARCHITECTURE[model]],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_musubi
@pytest.mark.parametrize("model", sorted(ARCHITECTURE))
def test_musubi_reads_every_rendered_argument_and_dataset_key(model: str, tmp_path: Path) -> None:
    seen = judge(model, tmp_path)
    args, datasets = seen["args"], seen["datasets"]
    entry = catalog.get_base_model(model)
    assert args["network_dim"] == 16 or args["network_dim"] == 32
    assert args["max_train_steps"] in ((1000,) if entry.experts else (2000, 3000))  # two experts: half each
    assert args["output_name"] == "m" and args["save_state"] is True
    if entry.musubi_task:
        assert args["task"] == entry.musubi_task
    if "--model_version" in entry.musubi_args:
        assert args["model_version"] == entry.musubi_args[1]
    assert datasets and all(d["resolution"][0] == d["resolution"][1] for d in datasets)
    if entry.edit:  # the prepared control folder reaches musubi's image datasets
        assert all(d["control_directory"].endswith(("/.control/1", "/.control/all")) for d in datasets)


@needs_musubi
@pytest.mark.parametrize(("model", "boundary"), [("wan2.2-t2v-a14b", 875), ("wan2.2-i2v-a14b", 900)])
def test_musubi_reads_each_wan22_experts_run_with_its_own_timesteps(model: str, boundary: int, tmp_path: Path) -> None:
    high, low = judge(model, tmp_path, "args_high_noise.json")["args"], judge(model, tmp_path)["args"]
    assert (high["min_timestep"], high["max_timestep"], low["min_timestep"], low["max_timestep"]) == (
        boundary, 1000, 0, boundary)
    assert high["preserve_distribution_shape"] is True and low["preserve_distribution_shape"] is True
    assert high["dit"].endswith("high_noise_14B_fp16.safetensors") and high["dit_high_noise"] is None
    assert low["dit"].endswith("low_noise_14B_fp16.safetensors") and low["dit_high_noise"] is None
    assert (high["output_name"], low["output_name"]) == ("m_high_noise", "m")


@needs_musubi
def test_musubi_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    """The judge is not lenient: an argument musubi lacks is refused by its parser."""
    with pytest.raises(AssertionError):
        judge("wan2.1-t2v-1.3b", tmp_path, engine={"name": "musubi", "options": {"args": {"no_such_flag": 1}}})


def aitk_judge(model: str, tmp_path: Path, **sections: dict) -> subprocess.CompletedProcess[str]:
    raw: dict = {"name": "m", "base_model": model, "engine": "ai-toolkit",
                 "dataset": {"path": "/data", "trigger_word": "tk"}, **sections}
    if catalog.get_base_model(model).edit:
        raw["dataset"]["control"] = "control"
    s = parse_spec(raw)
    text = AitkEngine().render(s, JobLayout(str(tmp_path / "job")), "j", s.catalog_entry.hub_id or "x")
    (tmp_path / "aitk_config.yaml").write_text(text["aitk_config.yaml"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(AITK), *sys.path])}
    return subprocess.run([sys.executable, "-m", "loraflow.testing.aitk_check", str(tmp_path / "aitk_config.yaml")],
                          capture_output=True, text=True, env=env, cwd=AITK, timeout=240, check=False)


AITK_MODELS = sorted(m for m, e in catalog.base_models().items() if "ai-toolkit" in e.engines)


@needs_aitk
@pytest.mark.parametrize("model", AITK_MODELS)
def test_aitoolkit_reads_every_rendered_key_and_builds_its_configs(model: str, tmp_path: Path) -> None:
    result = aitk_judge(model, tmp_path, sampling={"prompts": ["make it night"]})
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    entry = catalog.get_base_model(model)
    assert seen["arch"] == (entry.aitk.get("arch") or entry.arch)
    if entry.edit:
        assert str(seen["control_path"]).endswith(".control/1") or isinstance(seen["control_path"], list)
        assert seen["samples"][0]["prompt"] == "make it night"


@needs_aitk
def test_aitoolkit_judge_refuses_a_key_nothing_reads(tmp_path: Path) -> None:
    result = aitk_judge("flux-dev", tmp_path, engine={"name": "ai-toolkit", "options": {"process": {
        "train": {"steps": 10, "no_such_key": 1}}}})
    assert result.returncode == 2 and "train.no_such_key" in result.stderr
