"""Steps 9-11: the sample grid, the bundle and its publication, and a final check of what was made."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from loraflow.notebook.stops import NotebookStop


def samples_grid(job_id: str) -> Path | None:
    from loraflow.jobs.store import Store
    from loraflow.publish.bundle import collect_samples, sample_grid

    job = Store().get(job_id)
    items = collect_samples(job.folder / "samples")
    grid = sample_grid(job.folder / "samples", items)
    if grid is None:
        return None
    path = job.folder / "samples" / "grid.png"
    path.write_bytes(grid)
    return path


def package_and_publish(job_id: str, checkpoint_step: int | None = None) -> dict[str, Any]:
    from loraflow.jobs.store import Store
    from loraflow.publish.bundle import build_bundle
    from loraflow.running.publishing import publish  # the same checks as the API, the CLI and the web UI

    store = Store()
    job = store.get(job_id)
    bundle = build_bundle(store, job, checkpoint_step)
    published = publish(store, job.id, checkpoint_step) if job.train_spec.publish.targets else []
    best = (job.outputs.scorecard or {}).get("best") or {}
    return {
        "bundle": str(bundle),
        "size_mb": round(bundle.stat().st_size / 1e6, 2),
        "published": published,
        "link": download_link(bundle),
        "checkpoint_step": checkpoint_step,
        "best_checkpoint": best.get("checkpoint_step") if best.get("step") is not None else None,
        "best_why": best.get("why"),
    }


def best_checkpoint(job_id: str) -> tuple[int | None, str]:
    """The scorecard's best checkpoint (None: the final LoRA, or nothing scored) and why: the notebook's
    default for CHECKPOINT_STEP, printed so the user sees the reason and can pick another."""
    from loraflow.jobs.store import Store

    best = (Store().get(job_id).outputs.scorecard or {}).get("best") or {}
    if best.get("step") is None:
        return None, best.get("why") or "no scorecard: the final LoRA"
    return best.get("checkpoint_step"), best.get("why", "")


def download_link(path: Path) -> str:
    """A path Jupyter serves for download: relative to the notebook's folder when the file is under it."""
    return os.path.relpath(path, Path.cwd()) if Path.cwd() in path.resolve().parents else str(path)


def verify(job_id: str) -> dict[str, Any]:
    from loraflow.engines.external import safetensors_header
    from loraflow.jobs.store import Store
    from loraflow.publish.bundle import verify_bundle

    job = Store().get(job_id)
    lora = job.folder / f"{job.name}.safetensors"
    header = safetensors_header(lora) if lora.exists() else None
    samples = list((job.folder / "samples").glob("step-*/*.png")) + list((job.folder / "samples").glob("step-*/*.jpg"))
    bundle = job.outputs.bundle
    checks = {
        "lora_exists": lora.exists(),
        "lora_header_readable": header is not None,
        "samples_non_empty": bool(samples) and all(p.stat().st_size > 0 for p in samples),
        "bundle_checksums_ok": bool(bundle) and verify_bundle(Path(bundle)) == [],
    }
    if not all(checks.values()):
        failed = ", ".join(k for k, v in checks.items() if not v)
        raise NotebookStop(f"verification failed: {failed}", fix="see the job's events: loraflow jobs events " + job_id)
    return checks


def python_version_ok() -> bool:
    return sys.version_info >= (3, 11)
