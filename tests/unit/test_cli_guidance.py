"""What a new user meets on the CLI (issue 33): other trainers' key names, values far from the usual, a
full-size model on a machine with no GPU, providers not built yet, errors a retry cannot fix, tables at 80
columns and events as sentences."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from tests.conftest import EXAMPLES


def write(tmp_path: Path, **spec: object) -> Path:
    base = {"name": "m", "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**base, **spec}))
    return path


def test_other_trainers_key_names_get_did_you_mean(tmp_path: Path, cli) -> None:
    spec = write(
        tmp_path,
        base_model="tiny-flux",
        network={"dim": 8, "network_alpha": 4},
        training={"lr": 1e-4, "max_train_steps": 10},
    )
    result = cli("spec", "validate", spec)
    assert result.code == 2
    text = " ".join((result.out + result.err).split())
    assert "network.dim: unknown key. Did you mean 'network.rank'?" in text
    assert "network.network_alpha: unknown key. Did you mean 'network.alpha'?" in text
    assert "training.lr: unknown key. Did you mean 'training.learning_rate'?" in text
    assert "training.max_train_steps: unknown key. Did you mean 'training.steps'?" in text


def test_a_resolution_that_is_not_a_multiple_of_16_gets_the_values_to_use(tmp_path: Path, cli) -> None:
    result = cli("spec", "validate", write(tmp_path, base_model="tiny-flux", training={"resolution": [1000]}))
    assert result.code == 2
    text = " ".join((result.out + result.err).split())
    assert "use 992 or 1008 (the nearest), or 1024" in text


def test_values_far_from_the_models_usual_are_warned_about(tmp_path: Path, cli) -> None:
    spec = write(tmp_path, base_model="flux-dev", engine="builtin", training={"learning_rate": 1e-2})
    result = cli("spec", "validate", spec)
    assert result.code == 0, result.out + result.err
    text = " ".join(result.out.split())
    assert "training.learning_rate: 0.01 is 100x the usual 0.0001 for flux-dev" in text
    assert "training.vram_preset: not set, so flux-dev trains unquantized" in text
    quiet = cli("spec", "validate", write(tmp_path, base_model="flux-dev", engine="builtin",
                                          training={"vram_preset": 24}))  # fmt: skip
    assert quiet.code == 0 and "warning training." not in " ".join(quiet.out.split())


def test_a_full_size_model_on_a_machine_without_gpu_is_refused_before_anything(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LORAFLOW_ALLOW_CPU")
    monkeypatch.setenv("PATH", str(tmp_path / "no-nvidia-smi"))  # nvidia-smi is not found, as on this machine
    result = cli("train", write(tmp_path, base_model="flux-dev", engine="builtin"))
    assert result.code == 2
    text = " ".join(result.err.split())
    assert "flux-dev needs an NVIDIA GPU" in text and "compute.provider: vastai" in text
    assert Store().list_jobs() == []  # nothing recorded, nothing downloaded
    tiny = cli("spec", "validate", write(tmp_path, base_model="tiny-flux"))
    assert tiny.code == 0  # the tiny model stays a CPU model


def test_every_provider_the_schema_names_is_built(tmp_path: Path, cli) -> None:
    from loraflow.providers.registry import RENTED
    from loraflow.spec.compute import NOT_YET

    assert not NOT_YET and {"vastai", "runpod", "skypilot"} <= set(RENTED)
    result = cli("spec", "validate", write(tmp_path, base_model="tiny-flux", compute={"provider": "runpod"}))
    assert result.code == 0, result.out + result.err
    wrong = cli("spec", "validate", write(tmp_path, base_model="tiny-flux", compute={"provider": "lambda"}))
    assert wrong.code == 2 and "compute.provider" in wrong.out + wrong.err


def test_an_incomplete_model_folder_is_named_before_anything_starts(tmp_path: Path, cli) -> None:
    from loraflow.trainer.tiny import build_tiny_flux

    folder = build_tiny_flux(tmp_path / "tiny")
    (folder / "transformer" / "config.json").unlink()
    result = cli("train", write(tmp_path, base_model=str(folder), engine="builtin"))
    assert result.code == 2
    assert "transformer has no config.json" in " ".join(result.err.split())
    assert Store().list_jobs() == []


def test_a_model_folder_broken_after_submission_fails_once_without_restarts(tmp_path: Path) -> None:
    """The API path (no local checks at submit): the trainer's "no file named config.json" is not a crash a
    restart can fix, so the job fails at its first launch with the cause and its fix."""
    from loraflow.running.runner import JobRunner
    from loraflow.spec import load_spec
    from loraflow.trainer.tiny import build_tiny_flux

    folder = build_tiny_flux(tmp_path / "tiny")
    spec = load_spec(write(tmp_path, base_model=str(folder), engine="builtin", training={"steps": 4},
                           sampling={"every_n_steps": 0, "at_end": False}, monitor={"max_restarts": 2}))  # fmt: skip
    (folder / "transformer" / "config.json").unlink()  # broken after the spec was checked
    store = Store()
    job = store.create_job(spec)
    job.folder.mkdir(parents=True, exist_ok=True)
    (job.folder / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    assert JobRunner(store, job.id).run() is JobState.FAILED
    assert len(store.events(job.id, types=["train.launched"])) == 1  # no restart
    assert not store.events(job.id, types=["restart"])
    errors = [e.data for e in store.events(job.id, types=["error"])]
    assert errors[-1]["code"] == "bad_model" and "save_pretrained" in errors[-1]["hint"]


def test_jobs_list_fits_80_columns(cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rich.console import Console

    from loraflow.cli.jobs_cmd import jobs_table
    from loraflow.spec import load_spec

    store = Store()
    for name in ("a-rather-long-job-name", "second"):
        store.create_job(load_spec(write(tmp_path, name=name, base_model="tiny-flux")))
    jobs = store.list_jobs()
    narrow = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    narrow.print(jobs_table(jobs, {}, 80))
    lines = narrow.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    long = next(j for j in jobs if j.name == "a-rather-long-job-name")
    assert any(long.id in line and long.name in line for line in lines)  # one row a job, id and name whole


def test_events_are_sentences_never_python_values() -> None:
    from loraflow.cli.sentences import describe

    created = describe("job.created", {"name": "mascot", "engine": "builtin", "base_model": "tiny-flux"})
    assert created == "job created: mascot on tiny-flux with builtin"
    acquired = describe(
        "host.acquired", {"provider": "vastai", "instance_id": 7, "gpu": "RTX 4090", "price_usd_h": 0.4, "root": "/r"}
    )
    assert acquired == "host acquired: RTX 4090 on vastai at $0.400/h (instance 7)"
    assert describe("cost", {"usd": 0.1, "rate_usd_h": 0.4}) is None  # in the bar, not a line every few seconds
    near = {"code": "near_duplicate", "severity": "warning", "message": "looks almost the same as a.jpg (distance 2)",
            "fix": "keep the better of the two", "file": "b.jpg"}  # fmt: skip
    assert "b.jpg: looks almost the same as a.jpg" in str(describe("dataset.finding", near))  # both files named
    unknown = describe("credits.settled", {"usd": 1.5, "note": None, "job": {"id": "x"}})
    for raw in ("{", "}", "None", "'"):
        assert raw not in unknown
    assert unknown == "credits settled: usd 1.5, job id x"


def test_jobs_show_prints_no_none_and_no_dicts(tmp_path: Path, cli) -> None:
    from loraflow.spec import load_spec

    job = Store().create_job(load_spec(write(tmp_path, base_model="tiny-flux")))
    result = cli("jobs", "show", job.id)
    assert result.code == 0
    assert "None" not in result.out and "{'" not in result.out
    assert re.search(r"created at\s+\d{4}-\d\d-\d\d", result.out) or datetime.now().strftime("%Y") in result.out


def test_operator_commands_are_grouped_under_admin(cli) -> None:
    listing = cli("--help").out
    names = {m.group(1) for m in re.finditer(r"│ (\w+)\s{2,}", listing)}
    assert "admin" in names and not names & {"tokens", "credits", "gc", "reap", "worker", "store"}
    assert cli("admin", "tokens", "--help").code == 0
    assert cli("tokens", "--help").code == 0  # the old spelling still runs
    assert "<bool>" not in cli("train", "--help").out


def test_a_captioner_that_cannot_run_here_is_refused_at_once(tmp_path: Path, cli) -> None:
    """An offline hub used to mean minutes of silence before a traceback; now the reason comes first."""
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(EXAMPLES / "sample_dataset", photos)
    result = cli("caption", "run", photos, "--backend", "florence2")  # no model cached, HF_HUB_OFFLINE=1
    assert result.code == 2
    text = " ".join(result.err.split())
    assert "the florence2 captioner cannot run here" in text and "--backend template" in text


def test_result_events_are_short_sentences() -> None:
    """The result check's events read as sentences, not the scorecard dumped as `key value` pairs (`make demo`
    printed a 900-character `result scored: best step 30, name final, why ... rows step 10, name ...` line)."""
    from loraflow.cli.sentences import describe

    best = {"step": 30, "name": "final", "checkpoint_step": 30, "why": "step 30 scores highest (0.0253); " * 6}
    rows = [{"step": s, "name": f"step-{s:06d}", "effect": 0.01 * s, "score": 0.001 * s} for s in (10, 20, 30)]
    lines = {
        "effect": describe("result.effect", {"name": "step-000010", "step": 10, "effect": 0.0152, "ok": True,
                                             "trigger_dependence": 0.0403}),
        "inert": describe("result.effect", {"name": "final", "step": 30, "effect": 0.0001, "ok": False}),
        "scored": describe("result.checkpoint", {"name": "final", "step": 30, "effect": 0.0547, "effect_ok": True,
                                                 "similarity": 0.9911, "closest_training_image": "a.jpg"}),
        "best": describe("result.scored", {"best": best, "rows": rows, "effect_check": {"passed": True}}),
        "none": describe("result.scored", {"best": {"step": None, "why": "no checkpoint is eligible"}, "rows": []}),
        "trainer": describe("result", {"step": 30, "total": 30, "lora": "mascot.safetensors"}),
    }
    assert lines["effect"] == "effect check, step 10: changes the output (effect 0.0152); the trigger carries 4% of it"
    assert lines["inert"] == "effect check, the final LoRA: barely changes the output (effect 0.0001)"
    assert lines["scored"] == "scored the final LoRA: effect 0.0547, similarity 0.9911"
    assert lines["best"] == "best checkpoint: the final LoRA, of 3 scored (loraflow jobs show)"
    assert lines["none"] == "best checkpoint: none (no checkpoint is eligible)"
    assert lines["trainer"] == "trainer finished at step 30: mascot.safetensors"
    assert all(len(str(line)) < 120 for line in lines.values()), lines
