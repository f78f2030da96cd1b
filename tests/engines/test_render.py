"""Rendered engine configs for the default Flux spec, checked key by key against the reference notes."""

from __future__ import annotations

import json
import tomllib

import pytest
import yaml

from loraflow.engines.aitoolkit import AitkEngine
from loraflow.engines.kohya import KohyaEngine
from loraflow.engines.kohya_config import train_args
from loraflow.errors import UserInputError
from loraflow.layout import JobLayout
from loraflow.spec import parse_spec

LAYOUT = JobLayout("/work/jobs/abc")


def spec(**over: object):
    raw = {
        "name": "m1l4dy",
        "dataset": {"path": "/data/photos", "trigger_word": "m1l4dy"},
        "base_model": "flux-dev",
        "sampling": {"prompts": ["a photo of [trigger] in a cafe"]},
    }
    raw.update(over)
    return parse_spec(raw)


def aitk(s, monkeypatch: pytest.MonkeyPatch | None = None) -> dict:
    files = AitkEngine().render(s, LAYOUT, "job123", s.catalog_entry.hub_id or s.base_model)
    text = files["aitk_config.yaml"]
    assert "${" not in text
    return yaml.safe_load(text)


def test_aitoolkit_flux_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_" + "abcdefghijklmnopqrstuvwxyz012345")
    cfg = aitk(spec())
    assert cfg["job"] == "extension" and cfg["config"]["name"] == "m1l4dy"
    p = cfg["config"]["process"][0]
    assert p["type"] == "sd_trainer" and p["training_folder"] == "/work/jobs/abc/aitk"
    assert p["trigger_word"] is None  # the captions carry it; with dropout (0.05) ai-toolkit would add it back
    no_dropout = spec(dataset={"path": "/data/photos", "trigger_word": "m1l4dy", "captions": {"dropout_rate": 0}})
    assert aitk(no_dropout)["config"]["process"][0]["trigger_word"] == "m1l4dy"
    assert p["network"] == {
        "type": "lora",
        "linear": 16,
        "linear_alpha": 16,
        # targets: default (attention + MLP): ai-toolkit's own set less the modulation layers
        "network_kwargs": {"ignore_if_contains": ["norm1.linear", "norm1_context.linear", "norm.linear"]},
    }
    assert p["save"] == {"dtype": "bf16", "save_every": 250, "max_step_saves_to_keep": 4, "push_to_hub": False}
    ds = p["datasets"][0]
    assert ds["folder_path"] == "/work/jobs/abc/dataset" and ds["caption_ext"] == "txt"
    assert ds["caption_dropout_rate"] == 0.05 and ds["cache_latents_to_disk"] is True
    assert ds["resolution"] == [512, 768, 1024]
    t = p["train"]
    assert (t["batch_size"], t["steps"], t["gradient_checkpointing"], t["noise_scheduler"], t["optimizer"]) == (
        1,
        2000,
        True,
        "flowmatch",
        "adamw8bit",
    )
    assert (
        t["lr"] == 1e-4
        and t["dtype"] == "bf16"
        and t["timestep_type"] == "sigmoid"
        and t["train_text_encoder"] is False
    )
    m = p["model"]
    assert m["name_or_path"] == "black-forest-labs/FLUX.1-dev" and m["arch"] == "flux"
    assert "assistant_lora_path" not in m
    s = p["sample"]
    assert s["sampler"] == "flowmatch" and s["sample_every"] == 250 and s["prompts"] == ["a photo of m1l4dy in a cafe"]
    assert s["walk_seed"] is True and (s["width"], s["height"], s["sample_steps"]) == (1024, 1024, 20)
    assert p["logging"] == {"log_every": 1, "use_ui_logger": True}
    assert cfg["meta"]["loraflow_job_id"] == "job123" and cfg["meta"]["name"] == "[name]"
    whole = json.dumps(cfg)
    assert "hf_abcdefghij" not in whole  # secrets never rendered


def test_aitoolkit_presets_and_other_architectures() -> None:
    q = aitk(spec(training={"vram_preset": 24}))["config"]["process"][0]["model"]
    assert q["quantize"] is True and q["qtype"] == "qfloat8" and q["low_vram"] is False
    low = aitk(spec(training={"vram_preset": 12}))["config"]["process"][0]["model"]
    assert low["low_vram"] is True
    schnell = aitk(spec(base_model="flux-schnell"))["config"]["process"][0]
    assert schnell["model"]["assistant_lora_path"] == "ostris/FLUX.1-schnell-training-adapter"
    assert schnell["sample"]["sample_steps"] == 4 and schnell["sample"]["guidance_scale"] == 1.0
    sdxl = aitk(spec(base_model="sdxl", engine="ai-toolkit"))["config"]["process"][0]
    assert sdxl["model"]["arch"] == "sdxl" and sdxl["train"]["noise_scheduler"] == "ddpm"
    assert sdxl["sample"]["sampler"] == "ddpm"
    qwen = aitk(spec(base_model="qwen-image"))["config"]["process"][0]
    assert qwen["model"]["arch"] == "qwen_image" and qwen["model"]["qtype"].startswith("uint3|")
    assert qwen["train"]["cache_text_embeddings"] is True


def test_aitoolkit_refuses_env_substitution() -> None:
    with pytest.raises(UserInputError, match=r"sampling.prompts\[0\]"):
        aitk(spec(sampling={"prompts": ["costs ${HOME}"]}))


def test_kohya_flux_dev_files_and_arguments() -> None:
    s = spec(engine="kohya")
    files = KohyaEngine().render(s, LAYOUT, "job123", "unused")
    toml = tomllib.loads(files["dataset.toml"])
    assert toml["general"] == {
        "shuffle_caption": False,
        "caption_extension": ".txt",
        "keep_tokens": 1,
        "caption_dropout_rate": 0.05,  # the spec's default
    }
    assert [d["resolution"] for d in toml["datasets"]] == [512, 768, 1024]
    first = toml["datasets"][0]
    assert first["enable_bucket"] is True and first["batch_size"] == 1
    assert first["subsets"] == [{"image_dir": "/work/jobs/abc/dataset", "num_repeats": 1, "class_tokens": "m1l4dy"}]
    assert files["sample_prompts.txt"] == "a photo of m1l4dy in a cafe --w 1024 --h 1024 --d 42 --s 20 --g 3.5\n"
    args = json.loads(files["args.json"])
    assert args["script"] == "flux_train_network.py"
    a = args["args"]

    def value(flag: str) -> str:
        return a[a.index(flag) + 1]

    for flag in (
        "--network_train_unet_only",
        "--save_state",
        "--cache_latents_to_disk",
        "--gradient_checkpointing",
        "--console_log_simple",
        "--sdpa",
    ):
        assert flag in a, flag
    assert value("--pretrained_model_name_or_path") == "models/flux1-dev.safetensors"
    assert (value("--clip_l"), value("--t5xxl"), value("--ae")) == (
        "models/clip_l.safetensors",
        "models/t5xxl_fp16.safetensors",
        "models/ae.safetensors",
    )
    assert value("--network_module") == "networks.lora_flux"
    assert (value("--network_dim"), value("--network_alpha")) == ("16", "16.0")
    assert value("--learning_rate") == "0.0008" and value("--optimizer_type") == "AdamW8bit"
    assert (value("--timestep_sampling"), value("--discrete_flow_shift")) == ("shift", "3.1582")
    assert (value("--model_prediction_type"), value("--guidance_scale"), value("--loss_type")) == ("raw", "1.0", "l2")
    assert value("--max_train_steps") == "2000" and value("--save_every_n_steps") == "250"
    assert value("--dataset_config") == "/work/jobs/abc/engine/dataset.toml"
    assert (value("--output_dir"), value("--output_name")) == ("/work/jobs/abc/kohya", "m1l4dy")
    assert value("--sample_prompts") == "/work/jobs/abc/engine/sample_prompts.txt"
    assert "--split_mode" not in a and "--blocks_to_swap" not in a
    assert "--cache_text_encoder_outputs" not in a  # kohya refuses it with caption dropout (default 0.05)
    assert "accelerate.commands.launch" in files["train.sh"] and "--num_processes 1" in files["train.sh"]
    assert "git checkout --quiet 48d368fa" in files["setup_sd_scripts.sh"]


def test_kohya_vram_preset_uses_block_swap_and_sdxl_script() -> None:
    a = train_args(spec(engine="kohya", training={"vram_preset": 12}), LAYOUT)
    assert a[a.index("--blocks_to_swap") + 1] == "16" and "--fp8_base" in a and "--split_mode" not in a
    sdxl = KohyaEngine().render(spec(base_model="sdxl"), LAYOUT, "j", "x")
    # SDXL's classifier-free guidance is `--l` in sd-scripts (`--g` is read only as Flux's guidance embedding)
    assert sdxl["sample_prompts.txt"].endswith(" --s 25 --l 6.0\n") and " --g " not in sdxl["sample_prompts.txt"]
    args = json.loads(sdxl["args.json"])
    assert args["script"] == "sdxl_train_network.py"
    assert "networks.lora" in args["args"] and "--clip_l" not in args["args"] and "--no_half_vae" in args["args"]


def test_render_cli(cli, tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: x\ndataset: {path: ., trigger_word: tk}\nbase_model: flux-dev\n")
    out = cli("render", path, "--engine", "ai-toolkit")
    assert out.code == 0 and "--- aitk_config.yaml ---" in out.out and "training_folder: /JOB/aitk" in out.out
    kohya = cli("render", path, "--engine", "kohya", "--out", tmp_path / "r")
    assert kohya.code == 0 and (tmp_path / "r" / "dataset.toml").exists()
