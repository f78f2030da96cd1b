"""A missing engine stops a job before anything is made and names its install command; `engines install
--from` and `engines list` show what is installed and where."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from tests.conftest import EXAMPLES


@pytest.fixture(autouse=True)
def no_engine_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAFLOW_AITOOLKIT_DIR", raising=False)
    monkeypatch.delenv("LORAFLOW_KOHYA_DIR", raising=False)


def readme_spec(tmp_path: Path) -> Path:
    """The README's three-line spec (flux-dev, so ai-toolkit by default)."""
    path = tmp_path / "my.yaml"
    path.write_text(f"name: m1l4dy\ndataset: {{path: {EXAMPLES / 'sample_dataset'}, trigger_word: m1l4dy}}\n"
                    "base_model: flux-dev\n")
    return path


def test_train_without_the_engine_stops_before_anything_with_the_install_command(
    tmp_path: Path, cli, loraflow_home: Path
) -> None:
    result = cli("train", readme_spec(tmp_path))
    assert result.code == 2, result.out + result.err
    assert "ai-toolkit engine is not installed" in result.err
    assert "loraflow engines install ai-toolkit" in result.err and "Traceback" not in result.err
    assert Store().list_jobs() == []
    jobs = loraflow_home / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir())  # no job folder half-made
    validate = cli("spec", "validate", readme_spec(tmp_path))  # a valid spec; a warning for this machine
    assert validate.code == 0 and "loraflow engines install ai-toolkit" in validate.out


def test_a_job_submitted_without_cli_fails_at_once_with_engine_missing(tmp_path: Path) -> None:
    """What the API and web UI do: record the job and start its runner."""
    from loraflow.running.runner import JobRunner
    from loraflow.spec import load_spec

    spec = load_spec(readme_spec(tmp_path))
    store = Store()
    job = store.create_job(spec)
    job.folder.mkdir(parents=True, exist_ok=True)
    (job.folder / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    assert JobRunner(store, job.id).run() is JobState.FAILED
    failed = store.get(job.id)
    assert "loraflow engines install ai-toolkit" in (failed.error or "")
    errors = [e.data for e in store.events(job.id, types=["error"])]
    assert errors[-1]["code"] == "engine_missing" and "loraflow engines install ai-toolkit" in errors[-1]["hint"]
    assert not store.events(job.id, types=["stage.started"])  # before any stage


def test_remote_and_builtin_jobs_need_no_local_engine(tmp_path: Path) -> None:
    from loraflow.engines.installed import require_engine
    from loraflow.spec import parse_spec

    raw = yaml.safe_load(readme_spec(tmp_path).read_text())
    require_engine(parse_spec({**raw, "compute": {"provider": "vastai"}}))
    require_engine(parse_spec({**raw, "engine": "builtin"}))


def test_install_from_a_checkout_then_list(tmp_path: Path, cli, loraflow_home: Path) -> None:
    listed = cli("engines", "list")
    assert listed.code == 0 and "loraflow engines install kohya" in listed.out
    not_a_checkout = cli("engines", "install", "kohya", "--from", tmp_path)
    assert not_a_checkout.code == 2 and "no flux_train_network.py" in not_a_checkout.err
    checkout = tmp_path / "sd-scripts"
    (checkout / "venv" / "bin").mkdir(parents=True)
    (checkout / "flux_train_network.py").write_text("")
    (checkout / "venv" / "bin" / "python").symlink_to(sys.executable)
    result = cli("engines", "install", "kohya", "--from", checkout)
    assert result.code == 0, result.out + result.err
    link = loraflow_home / "engines" / "kohya"
    assert link.is_symlink() and link.resolve() == checkout.resolve()
    listed = cli("engines", "list")
    row = next(line for line in listed.out.splitlines() if "kohya" in line)
    assert "kohya       installed" in row and "install kohya" not in row
    from loraflow.engines.installed import describe

    kohya = describe("kohya")
    assert kohya.found and kohya.python == str(link / "venv" / "bin" / "python") and kohya.via == "install location"


def test_install_runs_the_pinned_setup_or_the_cpu_env_script(
    tmp_path: Path, loraflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What each install runs (the commands themselves download gigabytes: not run here)."""
    from loraflow.engines import installed

    ran: list[tuple[list[str], str]] = []

    def record(argv: list[str], say, cwd=None) -> None:
        ran.append((argv, Path(argv[1]).read_text() if argv[0] == "bash" else ""))

    monkeypatch.setattr(installed, "_run", record)
    dest = installed.install("ai-toolkit", None, lambda _: None)
    assert dest == loraflow_home / "engines" / "ai-toolkit" and ran[0][0][2] == str(dest)
    assert "git checkout --quiet 27a03a91" in ran[0][1] and "venv/bin/pip install" in ran[0][1]
    checkout = tmp_path / "ai-toolkit"
    checkout.mkdir()
    (checkout / "run.py").write_text("")
    ran.clear()
    assert installed.install("ai-toolkit", checkout, lambda _: None).resolve() == checkout.resolve()
    assert ran[0][0][1] == str(installed.CPU_ENV_SCRIPT) and "torch==2.13.0" in ran[0][1]
    script = Path(__file__).parents[2] / "scripts" / "aitoolkit_cpu_env.sh"
    assert installed.CPU_ENV_SCRIPT.resolve() == script.resolve()  # scripts/ links the packaged one
