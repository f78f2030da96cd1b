"""One spec, the same training on every engine: each value is rendered with its meaning, translated, or
refused by name while the spec is validated (issue 18)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import yaml

from loraflow.engines import aitoolkit, aitoolkit_files, kohya, kohya_files, musubi_files
from loraflow.engines.builtin import trainer_config
from loraflow.errors import SpecError
from loraflow.field_map.checks import rule_for
from loraflow.field_map.docs import markdown, with_table
from loraflow.field_map.fields import FIELDS
from loraflow.field_map.rules import ENGINES, PINS
from loraflow.field_map.schema import leaf_fields
from loraflow.layout import JobLayout
from loraflow.spec import TrainSpec, parse_spec

LAYOUT = JobLayout("/work/jobs/abc")
DOCS = Path(__file__).resolve().parents[2] / "docs"


def spec(engine: str, **sections: dict) -> object:
    raw: dict = {
        "name": "m1l4dy",
        "dataset": {"path": "/data/photos", "trigger_word": "m1l4dy"},
        "base_model": "flux-dev",
        "engine": engine,
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_spec(raw)


def refused(engine: str, **sections: dict) -> list[str]:
    with pytest.raises(SpecError) as err:
        spec(engine, **sections)
    return err.value.problems


def kohya_args(s) -> list[str]:
    return json.loads(kohya.KohyaEngine().render(s, LAYOUT, "j", "x")["args.json"])["args"]


def value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def aitk_process(s) -> dict:
    text = aitoolkit.AitkEngine().render(s, LAYOUT, "j", "black-forest-labs/FLUX.1-dev")["aitk_config.yaml"]
    return yaml.safe_load(text)["config"]["process"][0]


def test_every_spec_field_has_a_rule_on_every_engine() -> None:
    for field in leaf_fields(TrainSpec):
        for engine in ENGINES:
            rule_for(field, engine)  # raises KeyError for a field nobody decided about
    assert {f for f in set(FIELDS) - set(leaf_fields(TrainSpec)) if not f.startswith("base_model (")} == set()
    assert PINS == {"ai-toolkit": aitoolkit_files.PIN, "kohya": kohya_files.PIN, "musubi": musubi_files.PIN}


def test_docs_table_is_the_generated_one() -> None:
    doc = (DOCS / "engines.md").read_text(encoding="utf-8")
    assert with_table(doc) == doc, "run: python -m loraflow.field_map docs/engines.md"
    assert markdown() in doc


ISSUE = {
    "network": {"rank": 32, "alpha": 8},
    "training": {"gradient_accumulation": 4, "weight_decay": 0.01},
    "dataset": {"path": "/data/photos", "trigger_word": "m1l4dy", "captions": {"dropout_rate": 0.1}},
}


def test_issue_spec_is_honoured_on_kohya() -> None:
    s = spec("kohya", **ISSUE)
    a = kohya_args(s)
    assert (value(a, "--network_dim"), value(a, "--network_alpha")) == ("32", "8.0")
    assert value(a, "--gradient_accumulation_steps") == "4"
    assert value(a, "--optimizer_args") == "weight_decay=0.01"
    files = kohya.KohyaEngine().render(s, LAYOUT, "j", "x")
    assert tomllib.loads(files["dataset.toml"])["general"]["caption_dropout_rate"] == 0.1
    assert "--cache_text_encoder_outputs" not in a  # kohya asserts against it with caption dropout
    # the builtin engine takes the same values as they are
    b = spec("builtin", **ISSUE)
    cfg = trainer_config(b, LAYOUT, "j", "x")
    assert (cfg.rank, cfg.alpha, cfg.gradient_accumulation, cfg.weight_decay, cfg.caption_dropout) == (
        32,
        8,
        4,
        0.01,
        0.1,
    )


def test_issue_spec_on_ai_toolkit_refuses_alpha_by_name_and_honours_the_rest() -> None:
    problems = refused("ai-toolkit", **ISSUE)
    assert len(problems) == 1
    assert problems[0].startswith("network.alpha: engine ai-toolkit cannot honour this value")
    assert "forces alpha = rank" in problems[0] and "Fix: set network.alpha to 32" in problems[0]
    p = aitk_process(spec("ai-toolkit", **{**ISSUE, "network": {"rank": 32, "alpha": 32}}))
    assert p["train"]["gradient_accumulation"] == 4 and p["train"]["optimizer_params"] == {"weight_decay": 0.01}
    assert p["datasets"][0]["caption_dropout_rate"] == 0.1
    # ai-toolkit caches a dropped caption's embedding too; without its trigger_word that caption is empty
    assert p["train"]["cache_text_embeddings"] is True and p["trigger_word"] is None


def test_kohya_receives_what_it_used_to_drop() -> None:
    a = kohya_args(spec("kohya", training={"cache_latents": False}, network={"dropout": 0.1}))
    assert "--cache_latents_to_disk" not in a and value(a, "--network_dropout") == "0.1"
    assert a[a.index("--network_args") : a.index("--network_args") + 4] == [
        "--network_args",
        "img_mod_dim=0",
        "txt_mod_dim=0",
        "single_mod_dim=0",
    ]
    s = spec("kohya", dataset={"captions": {"shuffle_tags": True, "keep_tokens": 2, "dropout_rate": 0.0}})
    general = tomllib.loads(kohya.KohyaEngine().render(s, LAYOUT, "j", "x")["dataset.toml"])["general"]
    assert general["shuffle_caption"] is True and general["keep_tokens"] == 2
    assert "--cache_text_encoder_outputs" not in kohya_args(s)
    cached = kohya_args(spec("kohya", dataset={"captions": {"dropout_rate": 0.0}}))
    assert "--cache_text_encoder_outputs" in cached and "--cache_latents_to_disk" in cached


def test_keep_last_keeps_the_same_count_on_kohya() -> None:
    a = kohya_args(spec("kohya", checkpointing={"every_n_steps": 100, "keep_last": 3}))
    assert value(a, "--save_last_n_steps") == "200" == value(a, "--save_last_n_steps_state")
    from loraflow.testing.kohya_standin import removals

    # kohya's own rule: at step 500 it removes step 200, so 300, 400, 500 stay
    assert removals(100, 500, 200, 200) == [(200, False), (200, True)]


def test_schedulers_warmup_and_prodigy_mean_the_same_everywhere() -> None:
    linear = aitk_process(spec("ai-toolkit", training={"lr_scheduler": "linear"}))["train"]
    assert linear["lr_scheduler"] == "linear"
    assert linear["lr_scheduler_params"] == {"start_factor": 1.0, "end_factor": 0.0}  # decay, not a ramp up
    warm = aitk_process(spec("ai-toolkit", training={"lr_warmup_steps": 100}))["train"]
    assert warm["lr_scheduler"] == "constant_with_warmup" and warm["lr_scheduler_params"] == {"num_warmup_steps": 100}
    problems = refused("ai-toolkit", training={"lr_scheduler": "cosine", "lr_warmup_steps": 100})
    assert problems[0].startswith("training.lr_warmup_steps: engine ai-toolkit")
    a = kohya_args(spec("kohya", training={"lr_warmup_steps": 100}))
    assert value(a, "--lr_scheduler") == "constant_with_warmup" and value(a, "--lr_warmup_steps") == "100"
    cfg = trainer_config(spec("builtin", training={"lr_warmup_steps": 100}), LAYOUT, "j", "x")
    assert cfg.lr_scheduler == "constant_with_warmup"  # diffusers' `constant` would ignore the warmup
    # Prodigy without a rate of the user's own: 1.0 on every engine, whatever the catalog's AdamW default
    for engine in ENGINES[:3]:  # musubi trains the Wan models only: test_musubi.py
        assert spec(engine, training={"optimizer": "prodigy"}).training.learning_rate == 1.0
    assert spec("kohya", training={"optimizer": "prodigy", "learning_rate": 0.5}).training.learning_rate == 0.5
    problems = refused("ai-toolkit", training={"optimizer": "prodigy", "learning_rate": 1e-4})
    assert "replaces a Prodigy learning rate below 0.1 with 1.0" in problems[0]


def test_timestep_sampling_and_shift() -> None:
    a = kohya_args(spec("kohya"))
    assert (value(a, "--timestep_sampling"), value(a, "--discrete_flow_shift")) == ("shift", "3.1582")
    a = kohya_args(spec("kohya", training={"timestep_shift": 2.0}))
    assert value(a, "--discrete_flow_shift") == "2.0"
    assert aitk_process(spec("ai-toolkit", training={"timestep_sampling": "uniform"}))["train"]["timestep_type"] == (
        "linear"
    )
    problems = refused("ai-toolkit", training={"timestep_sampling": "shift"})
    assert problems[0].startswith("training.timestep_sampling: engine ai-toolkit") and "Fix: use" in problems[0]


def test_builtin_shift_is_a_shifted_logit_normal() -> None:
    import torch

    from loraflow.trainer.flow import sample_sigmas

    gen = torch.Generator().manual_seed(0)
    base = sample_sigmas(20000, "sigmoid", 3.0, gen)
    shifted = sample_sigmas(20000, "shift", 3.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, (3 * base / (1 + 2 * base)).clamp(1e-4, 1.0))


def test_schnell_uses_the_adapter_only_on_ai_toolkit() -> None:
    p = aitk_process(spec("ai-toolkit", base_model="flux-schnell"))
    assert p["model"]["assistant_lora_path"] == "ostris/FLUX.1-schnell-training-adapter"
    assert "assistant" not in " ".join(kohya_args(spec("kohya", base_model="flux-schnell")))


def test_render_engine_flag_equals_engine_in_the_spec(cli, tmp_path: Path) -> None:
    body = "name: x\ndataset: {path: ., trigger_word: tk}\nbase_model: flux-dev\ntraining: {vram_preset: 16}\n"
    plain, chosen = tmp_path / "plain.yaml", tmp_path / "kohya.yaml"
    plain.write_text(body)
    chosen.write_text(body + "engine: kohya\n")
    assert cli("render", plain, "--engine", "kohya", "--out", tmp_path / "a").code == 0
    assert cli("render", chosen, "--out", tmp_path / "b").code == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a = json.loads((tmp_path / "a" / "args.json").read_text())["args"]
    assert value(a, "--learning_rate") == "0.0008" and value(a, "--blocks_to_swap") == "8"  # kohya's own


def test_render_engine_flag_drops_the_other_engines_options(cli, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: x\ndataset: {path: .}\nbase_model: flux-dev\n"
        "engine: {name: ai-toolkit, options: {path: /opt/aitk, args: {bogus: 1}}}\n"
    )
    assert cli("render", path, "--engine", "kohya", "--out", tmp_path / "k").code == 0
    a = json.loads((tmp_path / "k" / "args.json").read_text())["args"]
    assert "--bogus" not in a and "/opt/aitk" not in (tmp_path / "k" / "train.sh").read_text()


def test_small_kohya_presets_keep_the_text_encoder_cache() -> None:
    a = kohya_args(spec("kohya", training={"vram_preset": 16}))
    assert "--cache_text_encoder_outputs" in a  # the preset sets no caption dropout: T5 cached, fits 16 GB
    a = kohya_args(spec("kohya", training={"vram_preset": 16}, dataset={"captions": {"dropout_rate": 0.1}}))
    assert "--cache_text_encoder_outputs" not in a  # the user's own rate wins


def test_refusals_reach_every_door(cli, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: x\ndataset: {path: .}\nbase_model: flux-dev\nnetwork: {rank: 32, alpha: 8}\n")
    for args in (("spec", "validate", path), ("render", path)):
        out = cli(*args)
        assert out.code == 2 and "network.alpha: engine ai-toolkit cannot honour" in out.err, out
    assert cli("render", path, "--engine", "kohya").code == 0  # kohya honours alpha


def test_api_answers_422_with_the_refusal(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from loraflow.jobs.store import Store
    from loraflow.server.app import ServiceConfig, create_app
    from loraflow.server.tokens import create_token

    store = Store()
    token = create_token(store, "alice")
    spec_text = yaml.safe_dump(
        {"name": "a", "dataset": {"captions": {"shuffle_tags": True}}, "base_model": "tiny-flux"}
    )
    with TestClient(create_app(store, ServiceConfig())) as client:
        r = client.post(
            "/api/jobs",
            headers={"Authorization": f"Bearer {token}"},
            data={"spec": spec_text},
            files={"dataset": ("d.zip", b"PK\x05\x06" + b"\0" * 18)},
        )
    assert r.status_code == 422, r.text
    assert any(e.startswith("dataset.captions.shuffle_tags: engine builtin") for e in r.json()["errors"])
