"""TrainSpec: catalog defaults, presets, strict keys with suggestions, YAML round-trip, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loraflow.errors import SpecError
from loraflow.spec import STARTER_SPEC, load_spec, parse_spec
from tests.conftest import EXAMPLES

MINIMAL = {"name": "m1l4dy", "dataset": {"path": "./photos", "trigger_word": "m1l4dy"}, "base_model": "flux-dev"}


def problems(raw: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    return info.value.problems


def test_three_line_spec_gets_catalog_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.engine.name == "ai-toolkit"
    assert (spec.network.rank, spec.network.alpha) == (16, 16)
    assert spec.training.resolution == [512, 768, 1024]
    assert spec.training.steps == 2000
    assert spec.sampling.steps == 20
    assert spec.catalog_entry.license == "flux-1-dev-non-commercial-license"
    schnell = parse_spec({**MINIMAL, "base_model": "flux-schnell"})
    assert (schnell.sampling.steps, schnell.sampling.guidance_scale) == (4, 1.0)


def test_engine_overrides_and_user_values_win() -> None:
    kohya = parse_spec({**MINIMAL, "engine": "kohya"})
    assert kohya.training.learning_rate == 0.0008 and kohya.training.timestep_sampling == "shift"
    mine = parse_spec({**MINIMAL, "engine": "kohya", "training": {"learning_rate": 3e-4}})
    assert mine.training.learning_rate == 3e-4
    assert mine.training.timestep_sampling == "shift"  # untouched keys still come from the catalog


def test_vram_preset_applies_per_engine_under_user_values() -> None:
    spec = parse_spec({**MINIMAL, "engine": "kohya", "training": {"vram_preset": 12}})
    assert spec.training.blocks_to_swap == 16 and spec.training.quantize == "fp8"
    aitk = parse_spec({**MINIMAL, "training": {"vram_preset": 12, "resolution": [1024]}})
    assert aitk.training.low_vram and aitk.training.quantize == "qfloat8"
    assert aitk.training.resolution == [1024]


def test_yaml_round_trip_is_exact() -> None:
    spec = parse_spec(
        {
            **MINIMAL,
            "publish": {"targets": [{"type": "s3", "bucket": "b"}]},
            "notifications": [{"type": "webhook", "url": "http://127.0.0.1:9/h"}],
        }
    )
    again = parse_spec(yaml.safe_load(spec.to_yaml()))
    assert again == spec
    assert again.to_yaml() == spec.to_yaml()


def test_unknown_keys_named_with_suggestion() -> None:
    found = problems(
        {
            **MINIMAL,
            "traning": {},
            "network": {"rnak": 4},
            "dataset": {**MINIMAL["dataset"], "captions": {"trigger_placment": "none"}},
            "publish": {"targets": [{"type": "huggingface", "repo_id": "a/b", "privat": True}]},
        }
    )
    assert "traning: unknown key. Did you mean 'training'?" in found
    assert "network.rnak: unknown key. Did you mean 'rank'?" in found
    assert "dataset.captions.trigger_placment: unknown key. Did you mean 'trigger_placement'?" in found
    assert "publish.targets[0].privat: unknown key. Did you mean 'private'?" in found


def test_bad_values_explained() -> None:
    found = problems(
        {
            **MINIMAL,
            "name": "has space",
            "training": {"resolution": [500], "steps": None},
            "compute": {"provider": "ssh"},
        }
    )
    joined = "\n".join(found)
    assert "name: use 1-64 letters" in joined
    assert "training.resolution[0]" in joined or "training.resolution: 500 is not a multiple of 16" in joined
    assert "provider 'ssh' needs compute.ssh" in joined
    assert problems({**MINIMAL, "training": {"steps": None}}) == ["training: set training.steps or training.epochs."]


def test_unknown_base_model_suggests() -> None:
    found = problems({**MINIMAL, "base_model": "flux-dve"})
    assert found == ["base_model: unknown base model 'flux-dve' Fix: did you mean 'flux-dev'?"]
    engine = problems({**MINIMAL, "base_model": "qwen-image", "engine": "kohya"})
    assert "engine 'kohya' does not support base model 'qwen-image'" in engine[0]


def test_an_unknown_base_model_does_not_hide_the_other_problems() -> None:
    found = problems({**MINIMAL, "base_model": "flux-dve", "training": {"steps": -7, "lerning_rate": 1}})
    assert found[0] == "base_model: unknown base model 'flux-dve' Fix: did you mean 'flux-dev'?"
    assert any(p.startswith("training.steps: Input should be greater than or equal to 1") for p in found)
    assert "training.lerning_rate: unknown key. Did you mean 'learning_rate'?" in found


def test_validate_names_every_problem_at_once(tmp_path: Path, cli) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: x\ndataset: {path: ./nowhere, trigger_word: ohwx}\nbase_model: flux-dve\n"
        "training:\n  steps: 10\n  steps: 20\n  rnak: 2\n"
    )
    out = cli("spec", "validate", spec)
    assert out.code == 2 and "Traceback" not in out.err
    assert "line 6: key 'steps' is given twice (first on line 5)" in out.err
    assert "dataset.path: './nowhere' does not exist" in out.err and str(tmp_path / "nowhere") in out.err
    assert "unknown base model 'flux-dve'" in out.err
    assert "training.rnak: unknown key" in out.err
    assert "4 problem(s)" in out.err
    # The same file with the mistakes mended is fine, and train-time loading never requires the dataset here.
    (tmp_path / "nowhere").mkdir()
    spec.write_text("name: x\ndataset: {path: ./nowhere}\nbase_model: flux-dev\ntraining: {steps: 20}\n")
    assert cli("spec", "validate", spec).code == 0
    assert load_spec(tmp_path / "s.yaml").training.steps == 20


def test_secrets_refused() -> None:
    found = problems(
        {
            **MINIMAL,
            "notifications": [
                {"type": "discord", "url": "https://discord.com/api/webhooks/123/abcdefghijklmnopqrstuvwxyz0123"}
            ],
            "publish": {"targets": [{"type": "huggingface", "repo_id": "hf_" + "abcdefghijklmnopqrstuvwxyz1234"}]},
        }
    )
    assert any(p.startswith("notifications[0].url: looks like a secret") and "url_env" in p for p in found)
    assert any(p.startswith("publish.targets[0].repo_id: looks like a secret") and "HF_TOKEN" in p for p in found)


def test_paths_resolved_relative_to_spec_file(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "model").mkdir()
    f = tmp_path / "specs" / "s.yaml"
    f.write_text("name: a\ndataset: {path: ../photos}\nbase_model: ../model\n")
    spec = load_spec(f)
    assert spec.dataset.path == str(tmp_path / "photos")
    assert spec.base_model == str(tmp_path / "model")
    assert spec.catalog_entry.id == "flux-dev"  # a local folder takes flux-dev defaults unless told
    f.write_text("name: a\ndataset: {path: ../photos}\nbase_model: ../nope\n")
    with pytest.raises(SpecError, match="neither a catalog id"):
        load_spec(f)


def test_spec_init_and_validate_cli(tmp_path: Path, cli) -> None:
    target = tmp_path / "new.yaml"
    (tmp_path / "photos").mkdir()  # the starter's dataset.path, which validate requires to exist
    assert cli("spec", "init", target).code == 0
    assert target.read_text() == STARTER_SPEC
    again = cli("spec", "init", target)
    assert again.code == 2 and "already exists" in again.err
    ok = cli("spec", "validate", target)
    assert ok.code == 0 and "my-lora on flux-dev with ai-toolkit" in ok.out
    target.write_text("name: x\ndataset: {path: p}\nbase_model: flux-dev\nnetwork: {rnak: 2}\n")
    bad = cli("spec", "validate", target)
    assert bad.code == 2
    assert "network.rnak: unknown key. Did you mean 'rank'?" in bad.err
    assert "Traceback" not in bad.err
    target.write_text("name: x\n  bad: [\n")
    broken = cli("spec", "validate", target)
    assert broken.code == 2 and "not valid YAML" in broken.err and "new.yaml:2" in broken.err


def test_examples_validate(cli) -> None:
    for name in ("demo.yaml", "flux-dev.yaml"):
        if name == "flux-dev.yaml":
            continue  # its dataset folder is the user's; validated via parse below
        assert cli("spec", "validate", EXAMPLES / name).code == 0
    raw = yaml.safe_load((EXAMPLES / "flux-dev.yaml").read_text())
    assert parse_spec(raw).training.quantize == "qfloat8"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("training", "steps", 10**30),
        ("training", "seed", 2**64),
        ("training", "seed", -1),
        ("sampling", "seed", 10**20),
    ],
)
def test_numbers_past_their_storage_range_are_refused_by_name(section: str, key: str, value: int) -> None:
    """`training.steps: 10**30` passed validation and ended `train` in an OverflowError (issue 34)."""
    raw = {"name": "n", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux", section: {key: value}}
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    assert f"{section}.{key}" in str(caught.value)
