"""musubi-tuner (Wan video LoRAs): the dataset TOML, the cache steps and training args it is given, its
console parsed from its exact output, resume from its own state folders, and refusals by field."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from safetensors.torch import save_file

from loraflow.engines.musubi import MusubiEngine, video_settings
from loraflow.engines.musubi_files import segment_dir
from loraflow.engines.musubi_parser import MusubiParser
from loraflow.errors import SpecError, UserInputError
from loraflow.field_map.checks import refusals
from loraflow.layout import JobLayout
from loraflow.spec import parse_spec

FIX = Path(__file__).parent / "fixtures"
LAYOUT = JobLayout("/JOB")


def wan(model: str = "wan2.1-t2v-1.3b", **sections: dict) -> object:
    raw: dict = {"name": "dancer", "dataset": {"path": "/data/clips", "trigger_word": "dnc"}, "base_model": model}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_spec(raw)


def rendered(spec: object, layout: JobLayout = LAYOUT) -> dict[str, str]:
    return MusubiEngine().render(spec, layout, "j1", "x")


def value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_wan_models_default_to_musubi_with_their_task_and_files() -> None:
    s = wan("wan2.2-t2v-a14b")
    assert s.engine.name == "musubi" and s.engine.options["target_frames"] == [1, 33]
    args = json.loads(rendered(s)["args.json"])["args"]
    assert value(args, "--task") == "t2v-A14B"
    assert value(args, "--dit").endswith("wan2.2_t2v_low_noise_14B_fp16.safetensors")  # (the second expert's run)
    assert value(args, "--network_module") == "networks.lora_wan"
    assert "--fp8_base" in args and "--fp8_scaled" in args  # the 14B default is fp8
    assert (value(args, "--timestep_sampling"), value(args, "--discrete_flow_shift")) == ("shift", "3.0")
    assert value(args, "--max_train_steps") == "1000" and "--save_state" in args  # each expert half the steps
    assert value(args, "--output_dir") == "/JOB/musubi/from-00001000" and value(args, "--output_name") == "dancer"
    one = json.loads(rendered(wan())["args.json"])["args"]
    assert value(one, "--task") == "t2v-1.3B" and "--dit_high_noise" not in one and "--fp8_base" not in one


def test_dataset_toml_has_image_and_video_datasets_with_their_own_caches(tmp_path: Path) -> None:
    s = wan(engine={"name": "musubi", "options": {"target_frames": [1, 25, 45], "source_fps": 30}})
    doc = tomllib.loads(rendered(s)["dataset.toml"])
    assert doc["general"] == {"caption_extension": ".txt", "batch_size": 1, "enable_bucket": True,
                              "bucket_no_upscale": False}
    images, videos = doc["datasets"]
    assert images == {"image_directory": "/JOB/dataset", "cache_directory": "/JOB/engine/cache/images-480",
                      "resolution": [480, 480], "num_repeats": 1}
    assert videos["video_directory"] == "/JOB/dataset" and videos["cache_directory"].endswith("videos-480")
    assert videos["target_frames"] == [1, 25, 45] and videos["frame_extraction"] == "head"
    assert videos["source_fps"] == 30.0 and isinstance(videos["source_fps"], float)  # musubi needs a decimal
    # a prepared dataset with images only: no empty video dataset
    layout = JobLayout(str(tmp_path))
    Path(layout.dataset).mkdir(parents=True)
    (Path(layout.dataset) / "manifest.json").write_text(json.dumps({"files": [{"name": "a.png"}]}))
    assert [set(d) & {"image_directory", "video_directory"} for d in tomllib.loads(
        rendered(s, layout)["dataset.toml"])["datasets"]] == [{"image_directory"}]


def test_cache_steps_run_before_training_in_the_launched_process() -> None:
    s = wan("wan2.1-t2v-14b", engine={"name": "musubi", "options": {"path": "/opt/musubi"}})
    cmd = MusubiEngine().command(s, LAYOUT, "python3")
    assert cmd.argv[:2] == ["bash", "-c"] and cmd.cwd == "/opt/musubi"
    latents, text, train = cmd.argv[2].split(" && ")
    assert "src/musubi_tuner/wan_cache_latents.py --dataset_config /JOB/engine/dataset.toml" in latents
    assert latents.endswith("--skip_existing") and "--vae models/wan_2.1_vae.safetensors" in latents
    assert "wan_cache_text_encoder_outputs.py" in text and "--fp8_t5" in text and "--skip_existing" in text
    assert train.startswith("exec python3 -m accelerate.commands.launch") and "--num_processes 1" in train
    files = rendered(s)
    assert "set -euo pipefail" in files["train.sh"] and "wan_train_network.py --task t2v-14B" in files["train.sh"]
    setup = files["setup_musubi.sh"]  # musubi is a package (pyproject), not a requirements file
    assert "git checkout --quiet 30c658c4" in setup and "pip install --quiet -e . prodigyopt" in setup
    assert " -r " not in setup


def test_prompts_are_one_frame_samples() -> None:
    s = wan(sampling={"prompts": ["[trigger] dancing"], "width": 832, "height": 480})
    # Wan's classifier-free guidance is `--l` (musubi reads `--g` as the guidance embedding Wan has not)
    assert rendered(s)["sample_prompts.txt"] == "dnc dancing --w 832 --h 480 --f 1 --d 42 --s 20 --l 5.0\n"


MUSUBI = os.environ.get("LORAFLOW_MUSUBI_DIR", "")


@pytest.mark.skipif(
    not (Path(MUSUBI) / "src/musubi_tuner/training/sampling_prompts.py").is_file(),
    reason="set LORAFLOW_MUSUBI_DIR to a musubi-tuner checkout (loraflow is checked against 30c658c4)",
)
def test_musubi_reads_the_sampling_guidance_as_wan_cfg(monkeypatch: pytest.MonkeyPatch) -> None:
    """musubi's own prompt-line parser gives the rendered guidance to `cfg_scale`, what the Wan sampler uses
    (its `guidance_scale` is not used); its module needs only `toml`, stood in for when missing."""
    import importlib.util
    import sys
    import types

    monkeypatch.setitem(sys.modules, "toml", sys.modules.get("toml") or types.ModuleType("toml"))
    path = Path(MUSUBI) / "src/musubi_tuner/training/sampling_prompts.py"
    module_spec = importlib.util.spec_from_file_location("musubi_sampling_prompts", path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    line = rendered(wan(sampling={"prompts": ["[trigger] dancing"], "guidance_scale": 6.5}))["sample_prompts.txt"]
    prompt = module.line_to_prompt_dict(line.strip())
    assert prompt["cfg_scale"] == 6.5 and "guidance_scale" not in prompt
    assert (prompt["prompt"], prompt["frame_count"], prompt["seed"]) == ("dnc dancing", 1, 42)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_frames": [1, 30]}, "[30] are not of the form N*4+1"),
        ({"target_frames": "33"}, "must be a list of frame counts"),
        ({"frame_extraction": "middle"}, "unknown 'middle'"),
        ({"target_frames": [1, 33], "frame_extraction": "chunk"}, "1 with frame_extraction chunk"),
    ],
)
def test_bad_video_options_are_refused_by_name(options: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:  # at validation: spec validate, render, train, the API's 422
        wan(engine={"name": "musubi", "options": options})
    [line] = err.value.problems
    assert line.startswith("engine.options: engine musubi cannot honour") and message in line and "Fix:" in line
    with pytest.raises(UserInputError):
        video_settings(wan().model_copy(update={"engine": wan().engine.model_copy(update={"options": options})}))


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"training": {"lr_scheduler": "cosine"}}, "training.lr_scheduler"),
        ({"training": {"steps": None, "epochs": 4}}, "training.epochs"),
        ({"dataset": {"path": "/d", "captions": {"dropout_rate": 0.1}}}, "dataset.captions.dropout_rate"),
        ({"training": {"guidance_scale": 3.5}}, "training.guidance_scale"),
        ({"training": {"quantize": "nf4"}}, "training.quantize"),
        ({"training": {"blocks_to_swap": 30}}, "training.blocks_to_swap"),
        ({"network": {"targets": ["q", "k"]}}, "network.targets"),
        ({"output": {"lora_format": "diffusers"}}, "output.lora_format"),
    ],
)
def test_values_musubi_cannot_honour_are_refused(sections: dict, field: str) -> None:
    with pytest.raises(SpecError) as err:
        wan(**sections)
    assert any(p.startswith(f"{field}: engine musubi cannot honour") and "Fix:" in p for p in err.value.problems)


def test_wan_models_refuse_the_image_engines() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "d", "dataset": {"path": "/d"}, "base_model": "wan2.1-t2v-1.3b", "engine": "kohya"})
    assert "use one of: musubi" in " ".join(err.value.problems)


def test_prodigy_without_a_rate_of_the_users_own_is_one() -> None:
    args = json.loads(rendered(wan(training={"optimizer": "prodigy"}))["args.json"])["args"]
    assert (value(args, "--optimizer_type"), value(args, "--learning_rate")) == ("prodigyopt.Prodigy", "1.0")


def test_attention_targets_exclude_the_mlp() -> None:
    args = json.loads(rendered(wan(network={"targets": "attention"}))["args.json"])["args"]
    assert value(args, "--network_args") == "exclude_patterns=['.*ffn.*']"
    assert refusals(wan(network={"targets": "all"})) == []


def parse(name: str, chunk: int) -> list[tuple[str, dict]]:
    data, parser, out = (FIX / name).read_bytes(), MusubiParser(), []
    for i in range(0, len(data), chunk):
        out += parser.feed(data[i : i + chunk])
    return [(e.type, e.data) for e in out + parser.flush()]


@pytest.mark.parametrize("chunk", [1, 13, 4096])
def test_run_log(chunk: int) -> None:
    evs = parse("musubi_run.log", chunk)
    progress = [d for t, d in evs if t == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 10, 16, 20, 30]
    # each step with its own loss (the bar's last redraw), not the one tqdm shows before set_postfix
    assert [p["loss"] for p in progress[:3]] == [0.131, 0.118, 0.104]
    assert progress[-1] == {"step": 30, "total": 30, "elapsed_s": 139.0, "eta_s": 0.0, "rate": 0.2155,
                            "loss": 0.0871}
    saved = [d["step"] for t, d in evs if t == "checkpoint.saved"]
    assert saved == [10, 20, 30]
    phases = [d["phase"] for t, d in evs if t == "phase"]
    assert phases.index("caching") < phases.index("training")
    assert not [t for t, _ in evs if t == "error"]


def test_resume_log_counts_from_the_resumed_step() -> None:
    evs = parse("musubi_resume.log", 64)
    assert ("resumed", {"step": 20}) in evs
    assert [d["step"] for t, d in evs if t == "progress"] == [21, 30]
    assert [d["step"] for t, d in evs if t == "checkpoint.saved"] == [30]  # from-00000020/...step00000010
    assert {"message": "total optimization steps / 学習ステップ数: 10", "total": 30} in [d for t, d in evs]


def test_nan_loss_fails_the_run() -> None:
    parser = MusubiParser()
    evs = parser.feed(b"steps:  10%|\xe2\x96\x88         | 3/30 [00:12<01:51,  4.12s/it, avr_loss=nan]\r")
    assert [e.data["code"] for e in evs if e.type == "error"] == ["nan_loss"]
    assert not MusubiEngine().outcome(0, True, parser).ok


def state(folder: Path, name: str, complete: bool = True) -> None:
    folder.mkdir(parents=True)
    save_file({"w": __import__("torch").zeros(2)}, folder / "model.safetensors")
    if complete:
        (folder / "random_states_0.pkl").write_bytes(b"\0")


def test_resume_goes_on_from_the_newest_whole_state_in_a_new_run_folder(tmp_path: Path) -> None:
    s = wan(training={"steps": 60}, checkpointing={"every_n_steps": 10})
    layout = JobLayout(str(tmp_path / "job"))
    first, second = Path(segment_dir(layout, 0)), Path(segment_dir(layout, 20))
    state(first / "dancer-step00000020-state", "dancer")
    state(second / "dancer-step00000010-state", "dancer")  # cumulative 30
    state(second / "dancer-step00000020-state", "dancer", complete=False)  # killed while saving
    (second / "dancer-step00000020.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    engine = MusubiEngine()
    actions = engine.prepare_resume(s, layout)
    assert "deleted damaged checkpoint from-00000020/dancer-step00000020.safetensors" in actions
    assert "deleted incomplete state from-00000020/dancer-step00000020-state" in actions
    assert actions[-1] == "resuming from from-00000020/dancer-step00000010-state at step 30"
    train = engine.command(s, layout, "python3").argv[2].split(" && ")[-1].split()
    assert value(train, "--max_train_steps") == "30"  # musubi trains this many more
    assert value(train, "--output_dir") == segment_dir(layout, 30)
    assert value(train, "--resume") == str(second / "dancer-step00000010-state")
    assert engine.final_lora(s, layout) == str(second / "dancer.safetensors")
