"""Shared fixtures: an isolated LORAFLOW_HOME per test and an in-process CLI runner."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# One math thread per process: the tiny models gain nothing from more, and with several trainers
# (and test workers) on two cores, OpenMP threads spinning against each other slow everything down.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture(autouse=True)
def loraflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "lfhome"
    monkeypatch.setenv("LORAFLOW_HOME", str(home))
    monkeypatch.delenv("LORAFLOW_DATABASE_URL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # tests never reach a hub
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # Stand-in engines "train" flux-dev with no weights on this GPU-less machine; the GPU check's own tests
    # take this away (tests/unit/test_cli_guidance.py).
    monkeypatch.setenv("LORAFLOW_ALLOW_CPU", "1")
    for secret in ("HF_TOKEN", "VAST_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"):
        monkeypatch.delenv(secret, raising=False)
    yield home


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli():
    """Run `loraflow ARGS` in-process and return its exit code, stdout and stderr."""
    from loraflow.cli import main

    def run(*args: object) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            sys.stdout, sys.stderr = saved
        return CliResult(code, out.getvalue(), err.getvalue())

    return run
