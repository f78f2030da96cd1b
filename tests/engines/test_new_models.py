"""The models of issue 30 through every engine the catalog names for them: what each engine is given (arch,
scripts, files, flags, pairs), the estimate rows, and the refusals by name."""

from __future__ import annotations

import json
import tomllib

import pytest
import yaml

from loraflow import catalog
from loraflow.engines import get_engine
from loraflow.errors import SpecError
from loraflow.layout import JobLayout
from loraflow.providers.estimate import model_kind, seconds_per_step
from loraflow.spec import parse_spec

LAYOUT = JobLayout("/JOB")
NEW = ["flux2-dev", "flux2-klein-base-4b", "flux2-klein-base-9b", "flux-kontext-dev", "qwen-image-edit-2509",
       "qwen-image-edit-2511", "chroma", "wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.1-i2v-14b"]


def spec(model: str, engine: str | None = None, **sections: dict) -> object:
    raw: dict = {"name": "m", "dataset": {"path": "/data/set", "trigger_word": "tk"}, "base_model": model}
    if catalog.get_base_model(model).edit:
        raw["dataset"]["control"] = "control"
    if engine:
        raw["engine"] = engine
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_spec(raw)


def render(s) -> dict[str, str]:
    entry = s.catalog_entry
    return get_engine(s.engine.name).render(s, LAYOUT, "j", entry.hub_id or "x")


def aitk(s) -> dict:
    return yaml.safe_load(render(s)["aitk_config.yaml"])["config"]["process"][0]


def musubi(s) -> tuple[list[str], str, dict]:
    files = render(s)
    return json.loads(files["args.json"])["args"], files["train.sh"], tomllib.loads(files["dataset.toml"])


def value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("model", NEW)
def test_every_new_model_renders_for_every_engine_the_catalog_names(model: str) -> None:
    entry = catalog.get_base_model(model)
    assert entry.default_engine in entry.engines and entry.license and entry.min_vram_gb > 0
    assert model_kind(spec(model)) in catalog.gpu_table()["models"]
    for engine in entry.engines:
        files = render(spec(model, engine))
        assert files, (model, engine)


@pytest.mark.parametrize(
    ("model", "arch", "name_or_path"),
    [
        ("flux2-dev", "flux2", "black-forest-labs/FLUX.2-dev"),
        ("flux2-klein-base-4b", "flux2_klein_4b", "black-forest-labs/FLUX.2-klein-base-4B"),
        ("flux2-klein-base-9b", "flux2_klein_9b", "black-forest-labs/FLUX.2-klein-base-9B"),
        ("flux-kontext-dev", "flux_kontext", "black-forest-labs/FLUX.1-Kontext-dev"),
        ("qwen-image-edit-2509", "qwen_image_edit_plus", "Qwen/Qwen-Image-Edit-2509"),
        ("qwen-image-edit-2511", "qwen_image_edit_plus", "Qwen/Qwen-Image-Edit-2511"),
        ("chroma", "chroma", "lodestones/Chroma1-Base"),
        ("wan2.2-t2v-a14b", "wan22_14b", "ai-toolkit/Wan2.2-T2V-A14B-Diffusers-bf16"),
        ("wan2.2-i2v-a14b", "wan22_14b_i2v", "ai-toolkit/Wan2.2-I2V-A14B-Diffusers-bf16"),
        ("wan2.1-i2v-14b", "wan21_i2v", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"),
    ],
)
def test_aitoolkit_arch_and_hub_id_are_the_ones_its_ui_names(model: str, arch: str, name_or_path: str) -> None:
    p = aitk(spec(model, "ai-toolkit"))
    assert (p["model"]["arch"], p["model"]["name_or_path"]) == (arch, name_or_path)
    assert p["train"]["noise_scheduler"] == "flowmatch" and p["sample"]["sampler"] == "flowmatch"


def test_aitoolkit_kontext_pairs_and_sample_controls() -> None:
    s = spec("flux-kontext-dev", "ai-toolkit", sampling={"prompts": ["make it night", "make it snow"],
                                                         "controls": ["p1.png"]})
    p = aitk(s)
    assert p["datasets"][0]["control_path"] == "/JOB/dataset/.control/1"
    assert p["sample"]["samples"] == [
        {"prompt": "make it night", "ctrl_img": "/JOB/dataset/.control/samples/0_0.png"},
        {"prompt": "make it snow", "ctrl_img": "/JOB/dataset/.control/samples/1_0.png"},
    ]
    assert "prompts" not in p["sample"]


def test_aitoolkit_qwen_edit_takes_one_control_folder_per_position(tmp_path) -> None:
    layout = JobLayout(str(tmp_path))
    for k in (1, 2):
        (tmp_path / "dataset" / ".control" / str(k)).mkdir(parents=True)
    (tmp_path / "dataset" / "manifest.json").write_text(json.dumps(
        {"files": [], "sample_controls": [[".control/samples/0_0.png", ".control/samples/0_1.png"]]}))
    s = spec("qwen-image-edit-2509", "ai-toolkit", sampling={"prompts": ["put them together"]})
    p = yaml.safe_load(get_engine("ai-toolkit").render(s, layout, "j", "Qwen/Qwen-Image-Edit-2509")
                       ["aitk_config.yaml"])["config"]["process"][0]
    ds = tmp_path / "dataset"
    assert p["datasets"][0]["control_path"] == [str(ds / ".control/1"), str(ds / ".control/2")]
    assert p["sample"]["samples"] == [{"prompt": "put them together",
                                       "ctrl_img_1": str(ds / ".control/samples/0_0.png"),
                                       "ctrl_img_2": str(ds / ".control/samples/0_1.png")}]
    assert p["model"]["qtype"].startswith("uint3|ostris/accuracy_recovery_adapters/qwen_image_edit_2509")
    assert p["train"]["cache_text_embeddings"] is True  # ai-toolkit caches Qwen's always


def test_aitoolkit_wan22_trains_both_experts_in_one_run_and_samples_one_frame() -> None:
    p = aitk(spec("wan2.2-t2v-a14b", "ai-toolkit"))
    assert p["model"]["model_kwargs"] == {"train_high_noise": True, "train_low_noise": True}
    assert p["datasets"][0]["num_frames"] == 33 and p["sample"]["num_frames"] == 1
    assert p["train"]["timestep_type"] == "linear"
    i2v = aitk(spec("wan2.2-i2v-a14b", "ai-toolkit"))
    assert i2v["train"]["disable_sampling"] is True  # ai-toolkit's I2V samples need a start image per prompt


@pytest.mark.parametrize(
    ("model", "script", "version", "network", "files"),
    [
        ("flux2-dev", "flux_2", "dev", "networks.lora_flux_2", ["--dit", "--vae", "--text_encoder"]),
        ("flux2-klein-base-4b", "flux_2", "klein-base-4b", "networks.lora_flux_2",
         ["--dit", "--vae", "--text_encoder"]),
        ("flux-kontext-dev", "flux_kontext", None, "networks.lora_flux",
         ["--dit", "--vae", "--text_encoder1", "--text_encoder2"]),
        ("qwen-image-edit-2509", "qwen_image", "edit-2509", "networks.lora_qwen_image",
         ["--dit", "--vae", "--text_encoder"]),
        ("qwen-image-edit-2511", "qwen_image", "edit-2511", "networks.lora_qwen_image",
         ["--dit", "--vae", "--text_encoder"]),
    ],
)
def test_musubi_image_families(model: str, script: str, version: str | None, network: str, files: list[str]) -> None:
    args, sh, toml = musubi(spec(model, "musubi"))
    lines = sh.strip().splitlines()[-3:]
    assert f"{script}_cache_latents.py" in lines[0] and f"{script}_cache_text_encoder_outputs.py" in lines[1]
    assert f"{script}_train_network.py" in lines[2]
    assert [a for a in args if a in files] == files and value(args, "--network_module") == network
    assert "--task" not in args
    for line in lines:  # every script of the family is told the model version
        assert (f"--model_version {version}" in line) == (version is not None)
    assert all("image_directory" in d and "video_directory" not in d for d in toml["datasets"])
    if catalog.get_base_model(model).edit:
        assert all(d["control_directory"].startswith("/JOB/dataset/.control/") for d in toml["datasets"])


def test_musubi_edit_prompts_name_their_controls() -> None:
    files = render(spec("flux-kontext-dev", "musubi", sampling={"prompts": ["make it night"]}))
    assert files["sample_prompts.txt"].strip().endswith("--ci /JOB/dataset/.control/samples/0_0.png")
    assert "--guidance_scale" in json.loads(files["args.json"])["args"]  # Kontext trains with a guidance value


def test_musubi_flux2_dev_has_no_fp8_text_encoder() -> None:
    _, sh, _ = musubi(spec("flux2-dev", "musubi"))
    assert "--fp8_text_encoder" not in sh and "--fp8_base --fp8_scaled" in sh
    _, sh, _ = musubi(spec("flux2-klein-base-9b", "musubi"))
    assert "--fp8_text_encoder" in sh


def test_musubi_wan_image_to_video() -> None:
    args, sh, _ = musubi(spec("wan2.1-i2v-14b"))
    assert value(args, "--task") == "i2v-14B" and value(args, "--clip").endswith("vit-huge-14.pth")
    latents = sh.strip().splitlines()[-3]
    assert "wan_cache_latents.py" in latents and "--i2v" in latents and "--clip" in latents
    args, sh, _ = musubi(spec("wan2.2-i2v-a14b"))
    assert value(args, "--task") == "i2v-A14B" and "--clip" not in args
    assert value(args, "--dit").endswith("wan2.2_i2v_low_noise_14B_fp16.safetensors")  # the second expert's run
    assert "--i2v" in next(line for line in sh.splitlines() if "wan_cache_latents.py" in line)


def test_kohya_chroma() -> None:
    args = json.loads(render(spec("chroma", "kohya"))["args.json"])["args"]
    assert value(args, "--model_type") == "chroma" and "--apply_t5_attn_mask" in args and "--clip_l" not in args
    assert value(args, "--guidance_scale") == "0.0" and value(args, "--network_module") == "networks.lora_flux"
    assert json.loads(render(spec("chroma", "kohya"))["args.json"])["script"] == "flux_train_network.py"


def test_engines_a_model_is_not_trained_by_are_refused_by_name() -> None:
    for model, engine in [("flux-kontext-dev", "kohya"), ("flux2-dev", "builtin"), ("chroma", "musubi"),
                          ("qwen-image-edit-2509", "kohya")]:
        with pytest.raises(Exception, match=f"engine '{engine}' does not support base model '{model}'"):
            spec(model, engine)


def test_pairs_are_required_by_edit_models_and_refused_by_the_others() -> None:
    with pytest.raises(SpecError, match=r"dataset\.control: FLUX\.1 Kontext"):
        parse_spec({"name": "m", "dataset": {"path": "/d"}, "base_model": "flux-kontext-dev"})
    with pytest.raises(SpecError, match="does not train from control images"):
        parse_spec({"name": "m", "dataset": {"path": "/d", "control": "control"}, "base_model": "flux-dev"})
    with pytest.raises(SpecError, match=r"control folder's name inside dataset\.path"):
        parse_spec({"name": "m", "dataset": {"path": "/d", "control": "../elsewhere"},
                    "base_model": "flux-kontext-dev"})
    with pytest.raises(SpecError, match=r"sampling.controls\[0\]: give 1 to 1 control images"):
        spec("flux-kontext-dev", sampling={"controls": [["a.png", "b.png"]]})
    assert spec("flux2-dev").dataset.control is None  # FLUX.2 takes reference images optionally


def test_step_time_estimates_scale_with_the_model() -> None:
    flux = seconds_per_step(parse_spec({"name": "m", "dataset": {"path": "/d"}, "base_model": "flux-dev"}), "H100 SXM")
    assert seconds_per_step(spec("flux2-dev"), "H100 SXM") > flux
    assert seconds_per_step(spec("flux2-klein-base-4b"), "H100 SXM") < flux
    assert seconds_per_step(spec("qwen-image-edit-2509"), "H100 SXM") > seconds_per_step(
        parse_spec({"name": "m", "dataset": {"path": "/d"}, "base_model": "qwen-image"}), "H100 SXM")


@pytest.mark.parametrize("model", NEW)
def test_loraflow_render_writes_each_engines_files_for_each_new_model(model: str, cli, tmp_path) -> None:
    entry = catalog.get_base_model(model)
    control = "  control: control\n" if entry.edit else ""
    path = tmp_path / "s.yaml"
    path.write_text(f"name: x\ndataset:\n  path: .\n  trigger_word: tk\n{control}base_model: {model}\n")
    expected = {"ai-toolkit": "aitk_config.yaml", "musubi": "dataset.toml", "kohya": "dataset.toml"}
    for engine in entry.engines:
        out = tmp_path / engine
        result = cli("render", path, "--engine", engine, "--out", out)
        assert result.code == 0, result.out + result.err
        assert (out / expected[engine]).is_file()


def test_wan22_on_the_aitoolkit_standin_delivers_both_experts_as_one_result(cli, tmp_path) -> None:
    """ai-toolkit trains both experts in one run and writes `_high_noise` / `_low_noise` files: the job completes
    on them and the result (job folder and bundle) holds both."""
    import zipfile

    from loraflow.jobs.states import JobState
    from loraflow.jobs.store import Store
    from tests.conftest import EXAMPLES

    engine = tmp_path / "engines" / "ai-toolkit"
    engine.mkdir(parents=True)
    (engine / "run.py").write_text("from loraflow.testing.aitoolkit_standin import main\nmain()\n")
    spec = {"name": "dancer", "base_model": "wan2.2-t2v-a14b",
            "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "dnc"},
            "engine": {"name": "ai-toolkit", "options": {"path": str(engine)}},
            "training": {"steps": 12, "resolution": [256]}, "sampling": {"every_n_steps": 0},
            "checkpointing": {"every_n_steps": 5, "keep_last": 2}}
    path = tmp_path / "wan.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli("train", path)
    assert result.code == 0, result.out + result.err
    job = Store().list_jobs()[0]
    assert job.state is JobState.COMPLETED and job.step == 12
    low, high = job.folder / "dancer.safetensors", job.folder / "dancer_high_noise.safetensors"
    assert low.is_file() and high.is_file() and low.read_bytes() != b""
    log = (job.folder / "run" / "train.log").read_text()  # the stand-in loads what wan22_14b_model loads
    assert "Loading transformer 2" in log and "Creating DualWanTransformer3DModel" in log
    assert "Loading Flux model" not in log
    with zipfile.ZipFile(job.outputs.bundle) as zf:
        assert {"dancer.safetensors", "dancer_high_noise.safetensors"} <= set(zf.namelist())
