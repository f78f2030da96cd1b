"""bench/gpu_job.py --tiny (issue 31): two whole `loraflow train` jobs of the tiny model on the CPU (one
process, then two gloo processes) split by phase from their own events, the same code the GPU run uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_job.py"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two whole jobs, one of them two processes, on a busy 2-core machine
def test_tiny_jobs_are_timed_by_phase(tmp_path: Path) -> None:
    out = tmp_path / "gpu_job_tiny.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = json.loads(out.read_text())
    assert results["machine"]["name"] == "CPU" and results["settings"]["steps"] == 4
    jobs = results["jobs"]
    assert sorted(jobs) == ["1", "2"]
    for n, job in jobs.items():
        phases = job["phases_s"]
        assert list(phases) == ["prepare", "start", "load", "cache", "compile", "steps", "samples", "saves",
                                "finish", "result check", "bundle", "other"], n  # fmt: skip
        assert sum(phases.values()) == pytest.approx(job["whole_s"], abs=0.1)
        assert job["steps"] == 4 and phases["steps"] > 0 and phases["samples"] > 0 and phases["saves"] > 0
        assert all(v >= 0 for k, v in phases.items() if k != "other"), phases
        assert 0 < job["overhead_fraction"] < 1
    assert jobs["1"]["scaling_efficiency"] == 1.0 and jobs["2"]["scaling_efficiency"] > 0
