"""Steps 2-3: the machine checked before anything runs (GPU, VRAM, disk, model access), then the engine installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from loraflow.notebook.settings import Settings, build_spec, fetch_dataset, output_root, secrets_status
from loraflow.notebook.stops import NotebookStop


def preflight(settings: Settings, require_gpu: bool = True) -> dict[str, Any]:
    from loraflow.hosts.local import LocalHost

    root = output_root(settings)
    fetch_dataset(settings)
    spec = build_spec(settings)
    gpus = LocalHost().gpu_stats()
    facts: dict[str, Any] = {"output_root": str(root), "gpus": gpus or [], "secrets": secrets_status()}
    if not gpus and require_gpu and spec.engine.name != "builtin":
        raise NotebookStop(
            "no NVIDIA GPU is visible",
            fix="rent an instance with a GPU, or set engine='builtin' "
            "with base_model='tiny-flux' to try the pipeline on the CPU",
        )
    if gpus:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        facts["driver"] = out.splitlines()[0] if out else None
        vram_gb = gpus[0]["mem_total_mb"] / 1024
        facts["vram_gb"] = round(vram_gb, 1)
        if spec.compute.gpus > len(gpus):
            raise NotebookStop(
                f"gpus={spec.compute.gpus} but this machine has {len(gpus)} GPU(s)",
                fix=f"set gpus={len(gpus)}, or rent an instance with {spec.compute.gpus} GPUs",
            )
        need = spec.training.vram_preset or spec.catalog_entry.min_vram_gb
        if vram_gb + 0.5 < need:
            raise NotebookStop(
                f"the GPU has {vram_gb:.0f} GB; this setup needs about {need} GB",
                fix="set vram_preset to 16 or 12, or rent a larger GPU",
            )
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["cuda"] = torch.version.cuda
    except ImportError:
        facts["torch"] = None
    free_gb = shutil.disk_usage(root).free / 1e9
    need_gb = 5 if spec.base_model == "tiny-flux" else spec.compute.gpu.disk_gb * 0.6
    facts["free_disk_gb"] = round(free_gb, 1)
    if free_gb < need_gb:
        raise NotebookStop(
            f"{free_gb:.0f} GB free under {root}; about {need_gb:.0f} GB are needed",
            fix="rent a larger disk or set output_root to a bigger mount",
        )
    entry = spec.catalog_entry
    if entry.gated and spec.base_model == entry.id:
        if not os.environ.get("HF_TOKEN"):
            raise NotebookStop(
                f"{entry.hub_id} is gated and HF_TOKEN is not set",
                fix="accept the license on huggingface.co, then run ask_secret('HF_TOKEN')",
            )
        facts["hf_access"] = _hf_access(entry.hub_id or "")
    return facts


def _hf_access(repo: str) -> str:
    try:
        from huggingface_hub import HfApi

        HfApi(token=os.environ.get("HF_TOKEN")).auth_check(repo)
        return "ok"
    except Exception as exc:
        return f"not confirmed ({type(exc).__name__})"


def bootstrap(settings: Settings) -> str:
    """Install the engine at its pin into its own venv (idempotent; nothing to do for builtin)."""
    spec = build_spec(settings)
    if spec.engine.name == "builtin":
        return "builtin engine: nothing to install"
    from loraflow.engines import get_engine
    from loraflow.engines.external import engine_dir
    from loraflow.layout import JobLayout

    files = get_engine(spec.engine.name).render(spec, JobLayout("/JOB"), "bootstrap", spec.base_model)
    script_name = next(n for n in files if n.startswith("setup_"))
    dest = engine_dir(spec.engine.name, spec.engine.options)
    script = output_root(settings) / script_name
    script.write_text(files[script_name])
    result = subprocess.run(["bash", str(script), str(dest)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NotebookStop(
            f"installing {spec.engine.name} failed: {result.stderr.strip()[-500:]}",
            fix="re-run this cell; check the instance's network and disk",
        )
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "installed"
