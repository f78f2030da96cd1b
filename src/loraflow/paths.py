"""Where loraflow keeps its state: one folder, LORAFLOW_HOME (default ~/.loraflow)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    root = Path(os.environ.get("LORAFLOW_HOME") or Path.home() / ".loraflow").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def jobs_root() -> Path:
    path = home() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def job_dir(job_id: str) -> Path:
    return jobs_root() / job_id


def models_root() -> Path:
    """Built or downloaded base models; LORAFLOW_MODELS_DIR shares one folder between homes."""
    path = Path(os.environ["LORAFLOW_MODELS_DIR"]) if os.environ.get("LORAFLOW_MODELS_DIR") else home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url() -> str:
    url = os.environ.get("LORAFLOW_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{home() / 'loraflow.db'}"
