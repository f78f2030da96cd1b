"""Publishing a job: the chosen checkpoint (the final LoRA by default) to every target in the spec."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from loraflow.jobs.store import Job, Store
from loraflow.publish.bundle import build_bundle, bundle_files


def publish_job(store: Store, job: Job, checkpoint_step: int | None = None) -> list[dict[str, Any]]:
    """Publish and record the results on the job (artifacts.published) and as a `published` event."""
    spec = job.train_spec
    files = bundle_files(store, job, checkpoint_step)
    bundle = build_bundle(store, job, checkpoint_step, files)
    lora_name = next(n for n in files if n.endswith(".safetensors"))
    results: list[dict[str, Any]] = []
    for target in spec.publish.targets:
        if target.type == "huggingface":
            from loraflow.publish.huggingface import publish_files

            steps = checkpoint_step or job.total_steps
            result = publish_files(
                {k: v for k, v in files.items() if k != "SHA256SUMS"},
                target.repo_id,
                target.private,
                f"loraflow: {spec.name}, {steps} steps (job {job.id})",
            )
        else:
            from loraflow.publish.s3 import publish

            lora = bundle.parent / lora_name
            with zipfile.ZipFile(bundle) as zf:
                lora.write_bytes(zf.read(lora_name))
            result = publish(
                bundle,
                lora,
                target.bucket,
                f"{target.prefix.strip('/')}/{job.id}".strip("/"),
                target.endpoint_url,
                target.public,
            )
        result["checkpoint_step"] = checkpoint_step
        results.append(result)
        store.append_event(job.id, "published", result)
    previous = list(store.get(job.id).artifacts.get("published") or [])
    store.add_artifacts(job.id, published=previous + results, published_bundle=str(Path(bundle)))
    return results
