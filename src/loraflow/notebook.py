"""The Python API behind notebooks/flux_lora_vastai.ipynb: every cell is one call here, so the notebook
holds settings and calls, never logic of its own.

Each step fails fast with a NotebookStop naming what is wrong and what to do.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.errors import LoraflowError

VAST_ROOTS = ("/workspace", "/data", "/root")


class NotebookStop(LoraflowError):
    """A step that cannot go on; the message says what to do."""


def show_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> list[str]:
    """IPython's display of a loraflow error: its message and fix in red, no traceback (the cell still
    fails, so Run All stops there). Bugs (any other exception) keep their full traceback."""
    text = value.render() if isinstance(value, LoraflowError) else str(value)
    first, *rest = text.splitlines() or [""]
    lines = [f"\x1b[31m{etype.__name__}:\x1b[0m {first}", *rest]
    if shell is not None:  # IPython leaves showing to the handler; the cell is marked failed all the same
        shell._showtraceback(etype, value, lines)
    return lines


def _install_error_display() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((LoraflowError,), show_error)


_install_error_display()


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

        value = getpass.getpass(f"{name} (leave empty to skip): ")
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
        "budget": {k: v for k, v in {"max_usd": settings.max_usd, "max_hours": settings.max_hours}.items() if v},
        "publish": {"targets": targets},
        "wandb": {"enabled": settings.wandb},
    }
    return parse_spec(deep_merge(raw, settings.extra), "settings")


# --- 2. preflight --------------------------------------------------------------------------------


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


# --- 3. bootstrap --------------------------------------------------------------------------------


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


# --- 4-6. dataset, captions, config --------------------------------------------------------------


def dataset_gate(settings: Settings) -> Any:
    from loraflow.dataset import DatasetRun

    spec = build_spec(settings)
    d = spec.dataset
    report = DatasetRun(d.path, d.checks, d.captions, d.trigger_word, d.caption_extension).check()
    lines = [f.line() for f in report.findings if f.severity.value != "info"]
    if not report.ok:
        raise NotebookStop("the dataset is not fit to train:\n" + "\n".join(lines), fix="fix the files listed")
    return report


def caption_preview(settings: Settings, limit: int = 12) -> str:
    """An HTML grid of the prepared images with their final captions (what training will see)."""
    import base64
    import io

    from PIL import Image

    from loraflow.dataset import DatasetRun

    spec = build_spec(settings)
    d = spec.dataset
    out = output_root(settings) / "preview" / f"{spec.name}-{int(time.time())}"
    DatasetRun(d.path, d.checks, d.captions, d.trigger_word, d.caption_extension).prepare(out)
    import json

    cells = []
    for item in json.loads((out / "manifest.json").read_text())["files"][:limit]:
        img = Image.open(out / item["name"]).convert("RGB")
        img.thumbnail((160, 160))
        buf = io.BytesIO()
        img.save(buf, format="JPEG")
        data = base64.b64encode(buf.getvalue()).decode()
        cells.append(
            f'<figure style="display:inline-block;width:170px;margin:4px;vertical-align:top">'
            f'<img src="data:image/jpeg;base64,{data}"/><figcaption style="font-size:11px">'
            f"{html.escape(item['caption'])}</figcaption></figure>"
        )
    return "<div>" + "".join(cells) + "</div>"


def config_preview(settings: Settings) -> dict[str, str]:
    from loraflow.cli.engine_cmd import PREVIEW_ROOT
    from loraflow.engines import get_engine
    from loraflow.layout import JobLayout

    spec = build_spec(settings)
    entry = spec.catalog_entry
    model = entry.hub_id if spec.base_model == entry.id and entry.hub_id else spec.base_model
    return get_engine(spec.engine.name).render(spec, JobLayout(PREVIEW_ROOT), "preview", model)


# --- 7. cost and time ----------------------------------------------------------------------------

# Seconds per optimizer step at 1024 px, rank 16 (reference notes: 4090 QLoRA ~3.5 s, H100 fp8 ~1.7 s).
SECONDS_PER_STEP = {
    "H200": 1.4,
    "H100": 1.7,
    "A100": 2.6,
    "L40S": 2.8,
    "RTX 6000 Ada": 2.8,
    "A6000": 3.6,
    "RTX 5090": 2.2,
    "RTX 4090": 3.5,
    "RTX 3090": 6.5,
    "A40": 6.5,
}


def instance_price() -> float | None:
    """This Vast.ai instance's own $/h, from the instance-scoped key Vast puts in the container."""
    cid, key = os.environ.get("CONTAINER_ID"), os.environ.get("CONTAINER_API_KEY")
    if not (cid and key):
        return None
    try:
        import httpx

        base = os.environ.get("VAST_URL", "https://console.vast.ai")
        data = httpx.get(
            f"{base}/api/v0/instances/{cid}/", headers={"Authorization": f"Bearer {key}"}, timeout=10
        ).json()
        inst = data.get("instances", data)
        return float(inst["dph_total"])
    except Exception:
        return None


def cost_guard(settings: Settings, gpu_name: str | None = None) -> dict[str, Any]:
    spec = build_spec(settings)
    price = instance_price() or settings.price_usd_per_hour
    name = gpu_name or next((g["name"] for g in ([] if spec.base_model == "tiny-flux" else _gpus())), "")
    per_step = next((v for k, v in SECONDS_PER_STEP.items() if k.lower() in name.lower()), 3.5)
    res = max(spec.training.resolution)
    per_step *= (res / 1024) ** 2 * max(1.0, spec.network.rank / 16) ** 0.25
    if spec.base_model == "tiny-flux":
        per_step = 0.05
    hours = (spec.training.steps or 1000) * per_step / 3600 + 0.25  # + loading, caching, samples, upload
    usd = hours * price if price is not None else None
    estimate = {
        "gpu": name or ("CPU" if spec.base_model == "tiny-flux" else "an unknown GPU"),
        "hours": round(hours, 2),
        "usd_per_hour": price,
        "usd": round(usd, 2) if usd is not None else None,
    }
    if usd is not None and spec.budget.max_usd and usd > spec.budget.max_usd:
        raise NotebookStop(
            f"estimated ${usd:.2f} is over the budget of ${spec.budget.max_usd:.2f}",
            fix="lower steps or resolution, or raise max_usd",
        )
    if spec.budget.max_hours and hours > spec.budget.max_hours:
        raise NotebookStop(
            f"estimated {hours:.1f} h is over max_hours {spec.budget.max_hours}", fix="lower steps or raise max_hours"
        )
    return estimate


def cost_line(estimate: dict[str, Any]) -> str:
    """The Cost cell's answer in one sentence a person reads at a glance."""
    hours = float(estimate["hours"])
    time_text = f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"
    if estimate.get("usd") is None:
        money = "cost unknown (set price_usd_per_hour, or run on a Vast.ai instance)"
    else:
        money = f"about ${estimate['usd']:.2f} at ${estimate['usd_per_hour']:.3f}/h"
    return f"about {time_text} on {estimate['gpu']}, {money}"


def _gpus() -> list[dict[str, Any]]:
    from loraflow.hosts.local import LocalHost

    return LocalHost().gpu_stats() or []


# --- 8. train --------------------------------------------------------------------------------------


# Keys that only steer the run around the training (money, publishing, notices, stall handling): a job
# whose training settings match is still the same job when these differ, and keeps its own values.
RUN_ONLY_KEYS = ("budget", "publish", "notifications", "wandb", "monitor")


def spec_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: old -> new` for every spec value that differs, by dotted key path."""
    changes: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        path = f"{prefix}.{key}" if prefix else str(key)
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += spec_changes(a, b, path)
        elif a != b:
            changes.append(f"{path}: {a!r} -> {b!r}")
    return changes


def _trains_differently(changes: list[str]) -> list[str]:
    return [c for c in changes if c.split(".", 1)[0].split(":", 1)[0] not in RUN_ONLY_KEYS]


def set_pause(job_id: str, stop_at_step: int | None) -> None:
    """Ask the builtin trainer to pause with a checkpoint at exactly this step (None: no pause)."""
    from loraflow import paths
    from loraflow.trainer.events import PAUSE_FILE

    path = paths.job_dir(job_id) / PAUSE_FILE
    if stop_at_step is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{stop_at_step}\n", encoding="utf-8")


def start_or_resume(settings: Settings, stop_at_step: int | None = None) -> str:
    """The job for these settings: re-attach to a running one, resume a stopped one, or start a new one.

    A job is reused only when it was started with the same training settings; after a change of steps,
    learning rate or any other key that decides what is trained, a new job starts and the cell says why
    (an old finished job is never passed off as the new settings' result)."""
    from loraflow.cli.train_cmd import submit
    from loraflow.jobs.states import ACTIVE, RESUMABLE, JobState
    from loraflow.jobs.store import Store
    from loraflow.running.control import start_runner

    output_root(settings)
    spec = build_spec(settings)
    wanted = spec.to_dict()
    store = Store()
    same_name = [j for j in store.list_jobs(limit=200) if j.name == spec.name and j.state is not JobState.CANCELLED]
    for job in same_name:
        changes = spec_changes(job.spec, wanted)
        if _trains_differently(changes):
            continue
        if changes:
            print(f"note: job {job.id} keeps its own {', '.join(changes[:4])} (a new name applies them)")
        if job.state in ACTIVE:
            print(f"re-attaching to job {job.id} ({job.state.value}, same settings)")
            set_pause(job.id, stop_at_step)
            start_runner(job.id)
            return job.id
        if job.state in RESUMABLE and settings.resume:
            print(f"resuming job {job.id} ({job.state.value} at step {job.step}/{job.total_steps}, same settings)")
            set_pause(job.id, stop_at_step)
            store.transition(job.id, JobState.PENDING, data={"resume": True})
            start_runner(job.id)
            return job.id
        if job.state in (JobState.COMPLETED, JobState.AWAITING_APPROVAL):
            print(f"job {job.id} already trained these settings ({job.state.value}); using its result")
            return job.id
    running = [j for j in same_name if j.state in ACTIVE]
    if running:
        changes = _trains_differently(spec_changes(running[0].spec, wanted))
        raise NotebookStop(
            f"job {running[0].id} named {spec.name!r} is still {running[0].state.value} with other settings "
            f"({'; '.join(changes[:4])})",
            fix=f"wait for it, stop it (loraflow jobs stop {running[0].id}), or give the new run another name",
        )
    job_id = submit(spec)
    set_pause(job_id, stop_at_step)
    if same_name:
        changes = _trains_differently(spec_changes(same_name[0].spec, wanted))
        shown = "; ".join(changes[:4]) + ("; ..." if len(changes) > 4 else "")
        print(f"settings changed since job {same_name[0].id} ({shown}): started a new job {job_id}")
    else:
        print(f"started a new job {job_id}")
    return job_id


def follow(job_id: str, stop_at_step: int | None = None, poll_s: float = 0.5) -> str:
    """Print progress until the job ends (re-run the cell to re-attach after closing the tab).

    stop_at_step pauses the job with a checkpoint at that step: the builtin trainer pauses there exactly;
    other engines are asked to stop as soon as the step is seen, which lands a few steps later."""
    from loraflow.jobs.states import ACTIVE
    from loraflow.jobs.store import Store

    store = Store()
    if stop_at_step is not None:
        set_pause(job_id, stop_at_step)
    exact = store.get(job_id).engine == "builtin"
    seq, last_print = 0, 0.0
    while True:
        for e in store.events(job_id, after_seq=seq):
            seq = e.seq
            if e.type == "progress":
                step = e.data["step"]
                if time.monotonic() - last_print > 2 or step == e.data["total"]:
                    last_print = time.monotonic()
                    print(f"step {step}/{e.data['total']}  loss {e.data.get('loss')}  {e.data.get('rate')} it/s")
                if stop_at_step is not None and step >= stop_at_step and not exact:
                    from loraflow.running.control import request_stop

                    request_stop(job_id)
                    stop_at_step = None
            elif e.type in ("resumed", "checkpoint.saved", "error", "stall.detected", "restart", "job.state"):
                print(f"{e.type}: {e.data}")
        job = store.get(job_id)
        if job.state not in ACTIVE:
            print(f"job {job_id}: {job.state.value} at step {job.step}/{job.total_steps}")
            return job.state.value
        time.sleep(poll_s)


# --- 9-11. samples, package, publish, verify -----------------------------------------------------


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
    from loraflow.publish.publisher import publish_job

    store = Store()
    job = store.get(job_id)
    bundle = build_bundle(store, job, checkpoint_step)
    published = publish_job(store, job, checkpoint_step) if job.train_spec.publish.targets else []
    return {
        "bundle": str(bundle),
        "size_mb": round(bundle.stat().st_size / 1e6, 2),
        "published": published,
        "link": download_link(bundle),
    }


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
