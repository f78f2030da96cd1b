"""Step 1: the one cell a person edits, where its outputs go, its secrets and dataset, and the spec it makes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.notebook.stops import NotebookStop

VAST_ROOTS = ("/workspace", "/data", "/root")


@dataclass
class Settings:
    """The one cell a person edits."""

    name: str = "my-lora"
    dataset: str = "/workspace/dataset.zip"  # uploaded zip, a folder, or a local path
    trigger_word: str = "ohwx"
    base_model: str = "flux-dev"
    engine: str = "ai-toolkit"  # ai-toolkit or builtin
    steps: int = 2000
    rank: int = 16
    learning_rate: float = 1e-4
    resolution: list[int] = field(default_factory=lambda: [512, 768, 1024])
    sample_prompts: list[str] = field(default_factory=lambda: ["a photo of [trigger]"])
    sample_every: int = 250
    checkpoint_every: int = 250
    vram_preset: int | None = None  # 12, 16, 24, 48, 80; None: detected from the GPU
    gpus: int = 1  # GPUs of this machine to train on, one process each (builtin, kohya; not ai-toolkit)
    nsfw: bool = False  # labels the job and model only; nothing is filtered
    caption_backend: str = "existing"  # existing or template for now
    caption_template: str = "a photo of [trigger]"
    resume: bool = True
    max_usd: float | None = None
    max_hours: float | None = None
    price_usd_per_hour: float | None = None  # used when the instance's own price cannot be read
    hf_repo: str | None = None
    hf_private: bool = True
    s3_bucket: str | None = None
    wandb: bool = False
    output_root: str | None = None  # None: detected (/workspace on Vast.ai)
    extra: dict[str, Any] = field(default_factory=dict)  # any other spec keys, merged last


def output_root(settings: Settings) -> Path:
    if settings.output_root:
        root = Path(settings.output_root).expanduser()
    else:
        root = next((Path(p) / "loraflow" for p in VAST_ROOTS if os.access(p, os.W_OK)), Path.cwd() / "loraflow")
    root.mkdir(parents=True, exist_ok=True)
    os.environ["LORAFLOW_HOME"] = str(root)
    return root


def secrets_status() -> dict[str, bool]:
    """Which secrets are set (never their values)."""
    return {
        name: bool(os.environ.get(name))
        for name in ("HF_TOKEN", "VAST_API_KEY", "AWS_ACCESS_KEY_ID", "WANDB_API_KEY", "LORAFLOW_WEBHOOK_SECRET")
    }


def ask_secret(name: str) -> None:
    """Read a token with a hidden prompt into the environment of this kernel (never into the notebook)."""
    if not os.environ.get(name):
        import getpass

        try:
            value = getpass.getpass(f"{name} (leave empty to skip): ")
        except (EOFError, OSError, RuntimeError) as exc:
            # Run headless (nbclient, papermill, "Run All" with no input box): ipykernel raises
            # StdinNotImplementedError, a RuntimeError. Not asking is right there; a traceback is not.
            print(
                f"{name} not set and this notebook cannot ask for it here ({type(exc).__name__}): going on without "
                f"it. Set {name} in the environment if the base model is gated or you publish to Hugging Face."
            )
            return
        if value:
            os.environ[name] = value


def fetch_dataset(settings: Settings) -> str:
    """A dataset given as an http(s) URL is downloaded once into the output root; paths pass through."""
    if not settings.dataset.startswith(("http://", "https://")):
        return settings.dataset
    import hashlib

    import httpx

    name = settings.dataset.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "dataset"
    digest = hashlib.sha256(settings.dataset.encode()).hexdigest()[:12]
    dest = output_root(settings) / "downloads" / f"{digest}-{name}"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        try:
            with httpx.stream("GET", settings.dataset, follow_redirects=True, timeout=60) as response:
                response.raise_for_status()
                with tmp.open("wb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        f.write(chunk)
        except httpx.HTTPError as exc:
            host = httpx.URL(settings.dataset).host
            raise NotebookStop(
                f"could not download the dataset from {host}: {exc}",
                fix="check the URL, or upload the zip to /workspace and give its path",
            ) from exc
        tmp.replace(dest)
    settings.dataset = str(dest)
    return settings.dataset


def build_spec(settings: Settings):
    from loraflow.catalog import deep_merge
    from loraflow.spec import parse_spec

    targets: list[dict[str, Any]] = []
    if settings.hf_repo:
        targets.append({"type": "huggingface", "repo_id": settings.hf_repo, "private": settings.hf_private})
    if settings.s3_bucket:
        targets.append({"type": "s3", "bucket": settings.s3_bucket})
    training: dict[str, Any] = {
        "steps": settings.steps,
        "learning_rate": settings.learning_rate,
        "resolution": settings.resolution,
    }
    if settings.vram_preset:
        training["vram_preset"] = settings.vram_preset
    raw: dict[str, Any] = {
        "name": settings.name,
        "base_model": settings.base_model,
        "engine": settings.engine,
        "dataset": {
            "path": settings.dataset,
            "trigger_word": settings.trigger_word,
            "nsfw": settings.nsfw,
            "captions": {"backend": settings.caption_backend, "template": settings.caption_template},
        },
        "network": {"rank": settings.rank, "alpha": settings.rank},
        "training": training,
        "sampling": {"prompts": settings.sample_prompts, "every_n_steps": settings.sample_every},
        "checkpointing": {"every_n_steps": settings.checkpoint_every},
        "compute": {"gpus": settings.gpus},
        "budget": {k: v for k, v in {"max_usd": settings.max_usd, "max_hours": settings.max_hours}.items() if v},
        "publish": {"targets": targets},
        "wandb": {"enabled": settings.wandb},
    }
    return parse_spec(deep_merge(raw, settings.extra), "settings")
