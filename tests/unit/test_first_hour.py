"""What a new user meets in the first hour on the command line: every refusal names the fix, and success
is reported as success."""

from __future__ import annotations

from pathlib import Path

from tests.unit.imagekit import write_dataset


def test_dataset_prepare_names_drop_bad_and_reports_the_written_dataset_as_fit(tmp_path: Path, cli) -> None:
    folder = write_dataset(tmp_path / "d", 5)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    refused = cli("dataset", "prepare", folder, "--out", tmp_path / "out", "--min-resolution", "64")
    assert refused.code == 2 and not (tmp_path / "out").exists()
    assert "run again with --drop-bad to leave out the 1 file(s)" in refused.err
    dropped = cli("dataset", "prepare", folder, "--out", tmp_path / "out", "--min-resolution", "64", "--drop-bad")
    assert dropped.code == 0, dropped.err
    assert "wrote a dataset fit to train: 5 images; left out 1 file(s)" in dropped.out
    assert "not fit to train" not in dropped.out
    few = cli("dataset", "prepare", folder, "-o", tmp_path / "o2", "--min-images", "50", "--min-resolution", "64",
              "--drop-bad")  # fmt: skip
    assert few.code == 2 and "they concern the whole dataset, which --drop-bad cannot mend" in few.err


def test_the_demo_is_shipped_in_the_package_and_runs_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    import tomllib
    from importlib import resources

    from loraflow.dataset import DatasetRun
    from loraflow.spec import load_spec
    from tests.conftest import REPO

    monkeypatch.chdir(tmp_path)  # not the repository root
    shipped = resources.files("loraflow.demo")
    spec = load_spec(Path(str(shipped.joinpath("demo.yaml"))))
    assert Path(spec.dataset.path).is_dir() and spec.base_model == "tiny-flux"
    d = spec.dataset
    assert DatasetRun(d.path, d.checks, d.captions, d.trigger_word).check().ok
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["loraflow"]
    package = REPO / "src" / "loraflow"
    shipped_files = {p for g in globs for p in package.glob(g)}
    assert all(p in shipped_files for p in (package / "demo").rglob("*") if p.is_file() and p.suffix != ".py")


def spec_file(tmp_path: Path, extra: str = "", base_model: str = "flux-dev") -> Path:
    from tests.conftest import EXAMPLES

    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: e\ndataset: {{path: {EXAMPLES / 'sample_dataset'}}}\nbase_model: {base_model}\n{extra}")
    return spec


def test_estimate_on_this_machine_names_its_device(tmp_path: Path, cli, monkeypatch) -> None:

    monkeypatch.setattr("loraflow.nvidia_smi.gpu_stats", lambda: None)
    out = cli("estimate", spec_file(tmp_path, base_model="tiny-flux"))
    assert out.code == 0, out.err
    assert "on this machine (CPU (" in out.out and "RTX 4090" not in out.out
    real = cli("estimate", spec_file(tmp_path))  # flux-dev is not timed on a CPU: refused with the way out
    assert real.code == 2 and "has no NVIDIA GPU; flux-dev needs one" in real.err
    assert "compute.provider: vastai" in real.err and "tiny-flux" in real.err
    card = [{"index": 0, "name": "NVIDIA GeForce RTX 3090", "util": 0, "mem_used_mb": 1, "mem_total_mb": 24576}]
    monkeypatch.setattr("loraflow.nvidia_smi.gpu_stats", lambda: card)
    data = cli("estimate", spec_file(tmp_path), "--json")
    import json

    [row] = json.loads(data.out)["estimates"]
    assert row["gpu"] == "NVIDIA GeForce RTX 3090" and row["usd_per_hour"] == 0.0
    from loraflow.providers.estimate import this_machine

    assert this_machine() == ("NVIDIA GeForce RTX 3090", "RTX 3090")  # timed by its own row of the table


def test_estimate_with_an_unreachable_api_names_the_host_and_gives_up(tmp_path: Path, cli, monkeypatch) -> None:
    from loraflow.testing.vast_emulator import free_port

    port = free_port()  # nothing listens there
    monkeypatch.setenv("VAST_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("VAST_API_KEY", "test-key")
    monkeypatch.setenv("LORAFLOW_VAST_BACKOFF_S", "0")
    out = cli("estimate", spec_file(tmp_path, "compute: {provider: vastai}\n"))
    assert out.code == 1 and "Traceback" not in out.err
    assert f"Vast.ai at http://127.0.0.1:{port}" in out.err and "did not answer after 2 tries" in out.err


def test_help_imports_no_heavy_library_and_lists_every_command(cli) -> None:
    import json
    import subprocess
    import sys

    probe = (
        "import json, sys, loraflow.cli; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'fastapi', 'sqlalchemy', 'pydantic', 'numpy', 'PIL', 'httpx', 'yaml', 'diffusers'))))"
    )
    heavy = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert heavy == []
    out = cli("--help")
    from loraflow.cli import LAZY, load_command

    assert out.code == 0 and all(name in out.out for name in LAZY)
    for name, (_, line) in LAZY.items():  # the stand-in help lines say what each command's own help says
        real = " ".join((load_command(name).help or "").split())
        assert real.startswith(line), (name, real)
    assert "approve" in cli("jobs", "--help").out
