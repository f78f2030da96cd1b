"""The notebook's job choice: a finished job is reused only for the settings it was trained with."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow import notebook as nb
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from tests.conftest import EXAMPLES

TO_COMPLETED = [JobState.PREPARING, JobState.PROVISIONING, JobState.TRAINING, JobState.FINISHING, JobState.COMPLETED]


@pytest.fixture
def settings(tmp_path: Path) -> nb.Settings:
    return nb.Settings(
        name="nb-choice", dataset=str(EXAMPLES / "sample_dataset"), base_model="tiny-flux", engine="builtin",
        steps=30, resolution=[64], output_root=str(tmp_path / "out"), caption_backend="template",
    )  # fmt: skip


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Jobs `submit` would start, recorded without running a trainer."""
    ids: list[str] = []

    def fake_submit(spec, force: bool = False) -> str:
        ids.append(Store().create_job(spec).id)
        return ids[-1]

    monkeypatch.setattr("loraflow.cli.train_cmd.submit", fake_submit)
    monkeypatch.setattr("loraflow.running.control.start_runner", lambda job_id, handoff=False: None)
    return ids


def finished_job(settings: nb.Settings) -> str:
    nb.output_root(settings)
    store = Store()
    job = store.create_job(nb.build_spec(settings))
    for state in TO_COMPLETED:
        store.transition(job.id, state)
    return job.id


def test_a_changed_setting_starts_a_new_job_and_says_why(settings, started, capsys) -> None:
    old = finished_job(settings)
    settings.steps = 40
    settings.learning_rate = 5e-4
    new = nb.start_or_resume(settings)
    said = capsys.readouterr().out
    assert new != old and started == [new]
    assert f"settings changed since job {old}" in said and f"started a new job {new}" in said
    assert "training.steps: 30 -> 40" in said and "training.learning_rate: 0.0001 -> 0.0005" in said
    assert Store().get(new).train_spec.training.steps == 40
    # Run All again with the same settings: the new (still pending) job is the one re-attached, nothing else starts.
    assert nb.start_or_resume(settings) == new and started == [new]
    assert f"re-attaching to job {new} (pending, same settings)" in capsys.readouterr().out


def test_the_same_settings_reuse_the_finished_job(settings, started, capsys) -> None:
    old = finished_job(settings)
    assert nb.start_or_resume(settings) == old and started == []
    assert f"job {old} already trained these settings" in capsys.readouterr().out
    settings.max_usd = 3.0  # money and publishing do not change what is trained: same job, said so
    assert nb.start_or_resume(settings) == old and started == []
    assert "keeps its own budget.max_usd: None -> 3.0" in capsys.readouterr().out


def test_a_running_job_with_other_settings_is_named_not_duplicated(settings, started) -> None:
    nb.output_root(settings)
    store = Store()
    running = store.create_job(nb.build_spec(settings))
    store.transition(running.id, JobState.PREPARING)
    settings.steps = 99
    with pytest.raises(nb.NotebookStop, match=rf"job {running.id} .* still preparing .*training.steps: 30 -> 99"):
        nb.start_or_resume(settings)
    assert started == []


def test_a_pause_request_is_written_for_the_trainer_and_cleared(settings, started) -> None:
    from loraflow import paths
    from loraflow.trainer.events import PAUSE_FILE
    from loraflow.trainer.loop import pause_step

    job_id = nb.start_or_resume(settings, stop_at_step=15)
    assert pause_step(paths.job_dir(job_id)) == 15
    nb.set_pause(job_id, None)
    assert not (paths.job_dir(job_id) / PAUSE_FILE).exists()


def test_cost_line_reads_as_a_sentence() -> None:
    line = nb.cost_line({"gpu": "RTX 4090", "hours": 1.52, "usd_per_hour": 0.35, "usd": 0.53})
    assert line == "about 1.5 h on RTX 4090, about $0.53 at $0.350/h"
    assert "{" not in nb.cost_line({"gpu": "CPU", "hours": 0.27, "usd_per_hour": None, "usd": None})
    assert nb.cost_line({"gpu": "CPU", "hours": 0.27, "usd_per_hour": None, "usd": None}).startswith("about 16 min")


def test_a_loraflow_error_shows_as_its_message_and_fix_in_a_notebook() -> None:
    from loraflow.errors import UserInputError

    exc = UserInputError("ai-toolkit is not installed", fix="run `loraflow engines install ai-toolkit`")
    lines = nb.show_error(None, type(exc), exc, None)
    assert lines == [
        "\x1b[31mUserInputError:\x1b[0m ai-toolkit is not installed Fix: run `loraflow engines install ai-toolkit`"
    ]


def test_the_gpu_count_reaches_the_spec_and_preflight_refuses_more_than_the_machine_has(
    settings: nb.Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert nb.build_spec(settings).compute.gpus == 1
    settings.gpus = 2
    assert nb.build_spec(settings).compute.gpus == 2  # issue 31: one process per GPU of this machine
    one = [{"name": "NVIDIA H100", "mem_total_mb": 81559}]
    monkeypatch.setattr("loraflow.hosts.local.LocalHost.gpu_stats", lambda self: one)
    monkeypatch.setattr("subprocess.run", lambda *a, **k: type("R", (), {"stdout": "570.86\n"})())
    with pytest.raises(nb.NotebookStop) as err:
        nb.preflight(settings, require_gpu=False)
    assert "gpus=2 but this machine has 1 GPU" in str(err.value)


def test_asking_for_a_token_headless_goes_on_with_a_message(monkeypatch, capsys) -> None:
    """The shipped notebook run with no input box (nbclient, papermill) used to end in a traceback."""
    import getpass

    from IPython.core.error import StdinNotImplementedError

    from loraflow.notebook.settings import ask_secret

    def no_stdin(prompt: str = "") -> str:
        raise StdinNotImplementedError("getpass was called, but this frontend does not support input requests.")

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(getpass, "getpass", no_stdin)
    ask_secret("HF_TOKEN")  # no exception
    out = capsys.readouterr().out
    assert "HF_TOKEN not set and this notebook cannot ask for it here" in out
    assert "HF_TOKEN" not in __import__("os").environ
