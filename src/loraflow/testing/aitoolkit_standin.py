"""A stand-in for ai-toolkit's `run.py CONFIG`: same console output (tqdm bar named after the job on
stderr, save/resume/error lines on stdout), same files (`<name>_000000250.safetensors` with
`training_info` in the header, `optimizer.pt`, `samples/<ms>__<step>_<i>.jpg`, `loss_log.db`), same
resume rule (newest file by ctime, trusting its header) and same exit codes (0 on success and Ctrl-C).
The training loop makes the same calls in the same order as ai-toolkit 27a03a91, so the bar redraws the
same way: the loss is set (a redraw at the old count) before the count moves on (a redraw only when
0.1 s passed), and a save named `_000000010` is written after the 11th step.

Faults for tests, from the environment: AITK_STANDIN_OOM_AT=N raises CUDA OOM at step N;
AITK_STANDIN_STEP_S sets seconds per step (default 0.01); AITK_STANDIN_INERT=1 saves every LoRA with its B
matrices all zero, as a run whose optimizer never moved them does.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from loraflow.testing.fake_lora import diffusers_lora, wan_comfy_lora


class Stopped(Exception):
    pass


def _banner(lines: list[str]) -> None:
    print("\n========================================")
    for line in lines:
        print(line)
    print("========================================")


def loss_at(step: int, total: int) -> float:
    """The stand-in's loss at loop index `step` (deterministic, so tests know every value)."""
    return 0.5 * math.exp(-step / max(total, 1)) + 0.05 * math.sin(step)


class _Bar(tqdm):
    """tqdm with the pause ai-toolkit's bar has: updates while paused are dropped, paused time is not counted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused = False
        self.paused_at = self._time()

    def pause(self) -> None:
        if not self.paused:
            self.paused, self.paused_at = True, self._time()

    def unpause(self) -> None:
        if self.paused:
            self.paused = False
            now = self._time()
            self.start_t += now - self.paused_at
            self.last_print_t = now

    def update(self, n: float | None = 1) -> bool | None:
        return None if self.paused else super().update(n)


class _LossLog:
    """ai-toolkit's loss_log.db (WAL): rows buffered and written every 0.25 s, so a SIGKILL loses the last
    ones; the first row of a run deletes rows after it (left from before a resume)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS steps (step INTEGER PRIMARY KEY, wall_time REAL NOT NULL)")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS metric_keys (key TEXT PRIMARY KEY, first_seen_step INTEGER, "
            "last_seen_step INTEGER)"
        )
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS metrics (step INTEGER NOT NULL, key TEXT NOT NULL, value_real REAL, "
            "value_text TEXT, PRIMARY KEY (step, key))"
        )
        self.row: tuple[int, float, float] | None = None
        self.pending: list[tuple[int, float, float, float]] = []
        self.first = True
        self.flushed = time.time()

    def log(self, step: int, loss: float, lr: float) -> None:
        self.row = (step, loss, lr)

    def commit(self) -> None:
        if self.row is None:
            return
        step, loss, lr = self.row
        self.row = None
        if self.first:
            self.first = False
            self.conn.execute("DELETE FROM metrics WHERE step > ?", (step,))
            self.conn.execute("DELETE FROM steps WHERE step > ?", (step,))
        self.pending.append((step, time.time(), loss, lr))
        if time.time() - self.flushed >= 0.25:
            self.flush()

    def flush(self) -> None:
        self.flushed = time.time()
        if not self.pending:
            return
        self.conn.execute("BEGIN")
        for step, wall, loss, lr in self.pending:
            self.conn.execute("INSERT OR REPLACE INTO steps VALUES (?, ?)", (step, wall))
            self.conn.execute("INSERT OR REPLACE INTO metrics VALUES (?, 'loss/loss', ?, NULL)", (step, loss))
            self.conn.execute("INSERT OR REPLACE INTO metrics VALUES (?, 'learning_rate', ?, NULL)", (step, lr))
        self.conn.execute("COMMIT")
        self.pending = []

    def close(self) -> None:
        self.flush()
        self.conn.close()


# What each model class prints while it loads (print_and_status_update in its load_model at 27a03a91):
# FLUX.1, Kontext, Qwen-Image and its edit models, FLUX.2 (Mistral for dev, Qwen3 for klein), Chroma, Wan 2.2
# A14B (its two transformers, one per expert).
_TAIL = ("Making pipe", "Preparing Model")
LOADING: dict[str, tuple[str, ...]] = {
    "flux": ("Loading Flux model", "Loading transformer", "Loading VAE", "Loading T5", "Loading CLIP", *_TAIL),
    "flux_kontext": ("Loading Flux Kontext model", "Loading transformer", "Loading T5", "Loading CLIP",
                     "Loading VAE", *_TAIL),
    "qwen_image": ("Loading Qwen Image model", "Loading transformer", "Text Encoder", "Loading VAE", *_TAIL,
                   "Model Loaded"),
    "flux2": ("Loading Mistral", "Loading Flux2 model", "Loading transformer", "Loading VAE", *_TAIL, "Model Loaded"),
    "flux2_klein": ("Loading Qwen3", "Loading Flux2 model", "Loading transformer", "Loading VAE", *_TAIL,
                    "Model Loaded"),
    "chroma": ("Loading transformer", "Double Blocks: 19", "Single Blocks: 38", "Loading T5", "Loading VAE", *_TAIL),
    "wan22_14b": ("Loading transformer 1", "Loading transformer 2", "Creating DualWanTransformer3DModel",
                  "Loading VAE", *_TAIL),
}
LOADING.update({a: LOADING["qwen_image"] for a in ("qwen_image_edit", "qwen_image_edit_plus")})
LOADING.update({a: LOADING["flux2_klein"] for a in ("flux2_klein_4b", "flux2_klein_9b")})
LOADING["wan22_14b_i2v"] = LOADING["wan22_14b"]


def _sample_items(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """SampleConfig's items: `samples` as given, or the legacy `prompts` list."""
    return sample.get("samples") or [{"prompt": p} for p in sample.get("prompts", [])]


def _sample(root: Path, step: int, items: list[dict[str, Any]]) -> None:
    (root / "samples").mkdir(exist_ok=True)
    for i, item in enumerate(items):
        stamp = int(time.time() * 1000)
        image = Image.new("RGB", (32, 32), (step % 255, 40 * i % 255, 90))
        controls = [item[k] for k in ("ctrl_img", "ctrl_img_1", "ctrl_img_2", "ctrl_img_3") if item.get(k)]
        for path in controls:  # base_model.generate_images opens each control image (a missing one raises)
            with Image.open(path) as ctrl:
                image.paste(ctrl.convert("RGB").resize((16, 16)))
        image.save(root / "samples" / f"{stamp}__{step:09d}_{i}.jpg")


def _save(root: Path, name: str, step: int, rank: int, meta: dict[str, Any], final: bool = False,
          experts: bool = False) -> Path:
    path = root / (f"{name}.safetensors" if final else f"{name}_{step:09d}.safetensors")
    # Wan 2.2 A14B (wan22_14b_model.save_lora): one file per expert, none combined
    pair = [path.with_name(path.name.replace(".safetensors", f"{e}.safetensors")) for e in ("_high_noise",
                                                                                          "_low_noise")]
    for each in pair if experts else [path]:
        _save_file(each, step, rank, meta, name, wan=meta.get("loraflow_arch", "").startswith("wan"))
    torch.save({"step": step}, root / "optimizer.pt")
    print(f"Saved optimizer to {root / 'optimizer.pt'}")
    return path


def _save_file(path: Path, step: int, rank: int, meta: dict[str, Any], name: str, wan: bool = False) -> None:
    header = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}
    header.update(
        {
            "training_info": json.dumps({"step": step, "epoch": 0}),
            "ss_base_model_version": "flux.1",
            "ss_output_name": name,
            "format": "pt",
            "software": json.dumps(
                {"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit", "version": "0.12.26"}
            ),
        }
    )
    inert = os.environ.get("AITK_STANDIN_INERT") == "1"
    state = wan_comfy_lora(rank, step) if wan else diffusers_lora(rank, seed=step, inert=inert)
    save_file(state, path, metadata=header)  # in place, as ai-toolkit does
    print(f"Saved checkpoint to {path}")


def _resume(root: Path, name: str) -> int:
    """ai-toolkit resumes from its newest save by itself: the step it read, 0 on a fresh run."""
    candidates = [p for p in root.glob(f"{name}*.safetensors")]
    if not candidates:
        return 0
    latest = max(candidates, key=lambda p: p.stat().st_ctime)
    print(f"#### IMPORTANT RESUMING FROM {latest} ####")
    print(f"Loading from {latest}")
    with safe_open(str(latest), "pt") as f:  # a truncated file raises here, as the real loader does
        info = json.loads((f.metadata() or {}).get("training_info", "{}"))
    start = int(info.get("step", 0))
    print(f"Found step {start} in metadata, starting from there")
    if (root / "optimizer.pt").exists():
        print(f"Loading optimizer state from {root / 'optimizer.pt'}")
        print("Updating optimizer LR from params")
    return start


def _prune(root: Path, name: str, keep: int) -> None:
    """max_step_saves_to_keep: the oldest step saves go, as ai-toolkit removes them."""
    saves = sorted(root.glob(f"{name}_*.safetensors"), key=lambda p: p.stat().st_ctime)
    for old in saves[: max(0, len(saves) - keep)]:
        print(f"Removing old save: {old}")
        old.unlink()


def run(config_path: str) -> int:
    raw = Path(config_path).read_text()
    if "${" in raw:
        print(f"Error running job: Environment variable {raw.split('${')[1].split('}')[0]} not set")
        return 1
    cfg = yaml.safe_load(raw)
    name = cfg["config"]["name"]
    proc = cfg["config"]["process"][0]
    meta = {k: str(v).replace("[name]", name) for k, v in (cfg.get("meta") or {}).items()}
    print("Running 1 job")
    print(json.dumps(proc, indent=4))
    print("#############################################")
    print(f"# Running job: {name}")
    print("#############################################")
    print("Running  1 process")
    for line in LOADING.get(str(proc["model"].get("arch")), LOADING["flux"]):
        print(line)
    net = proc["network"]
    print(f"create LoRA network. base dim (rank): {net['linear']}, alpha: {net['linear_alpha']}")
    print("create LoRA for Text Encoder: 0 modules.")
    print("create LoRA for U-Net: 34 modules.")
    root = Path(proc["training_folder"]) / name
    root.mkdir(parents=True, exist_ok=True)
    start = _resume(root, name)
    dataset = proc["datasets"][0]
    images = [
        p for p in Path(dataset["folder_path"]).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")
    ]
    controls = dataset.get("control_path")
    folders = [controls] if isinstance(controls, str) else (controls or [])
    for image in images:  # FileItemDTO: a target's control is the same stem in each control folder
        if folders and not any(Path(f, image.stem + ext).exists() for f in folders for ext in (".jpg", ".png",
                                                                                              ".jpeg", ".webp")):
            print(f"Error running job: no control image for {image}")
            return 1
    for res in dataset["resolution"]:
        print(f"Dataset: {dataset['folder_path']}")
        print(f"  -  Found {len(images)} images")
        print(f"Bucket sizes for {dataset['folder_path']}:")
        print(f"{res}x{res}: {len(images)} files")
        print("1 buckets made")
        print(f"Caching latents for {dataset['folder_path']}")
    train, save, sample = proc["train"], proc["save"], proc["sample"]
    meta["loraflow_arch"] = str(proc["model"].get("arch"))  # the LoRA's layout follows the model's arch
    kwargs = proc["model"].get("model_kwargs") or {}
    experts = bool(kwargs.get("train_high_noise") and kwargs.get("train_low_noise"))
    total = int(train["steps"])
    lr = float(train["lr"])
    step_s = float(os.environ.get("AITK_STANDIN_STEP_S", "0.01"))
    oom_at = int(os.environ.get("AITK_STANDIN_OOM_AT", "0"))
    logger = _LossLog(root / "loss_log.db")
    stop = {"now": False}

    def on_sigint(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # ai-toolkit does not handle SIGTERM
    sampling = not train.get("disable_sampling")
    every = int(sample["sample_every"] or 0)
    bar = _Bar(total=total, desc=name, leave=True, initial=start, smoothing=0.7, file=sys.stderr)
    bar.pause()
    try:
        # `step` is ai-toolkit's loop index: the step being trained, counted from 0. Its save, sample and
        # loss_log.db row are named by it (none on the first step of a run), then the bar shows step + 1.
        for step in range(start, total):
            bar.unpause()
            if stop["now"]:
                raise Stopped
            if oom_at and step + 1 == oom_at:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total)")
            time.sleep(step_s)
            loss = loss_at(step, total)
            bar.set_postfix_str(f"lr: {lr:.1e} loss: {loss:.3e}")  # a redraw at the old count
            if step != start:
                if step % int(save["save_every"]) == 0:
                    bar.pause()
                    print(f"\nSaving at step {step}")
                    _save(root, name, step, int(net["linear"]), meta, experts=experts)
                    _prune(root, name, int(save["max_step_saves_to_keep"]))
                    bar.unpause()
                if sampling and every and step % every == 0:
                    bar.pause()
                    _sample(root, step, _sample_items(sample))
                    bar.unpause()
                logger.log(step, loss, lr)
            logger.commit()
            bar.update(step + 1 - bar.n)  # redrawn only when 0.1 s passed since the last redraw
    except Stopped:
        bar.close()
        logger.close()
        _banner(["Job stopped"])
        return 0
    except Exception as exc:
        bar.close()
        logger.close()
        print(f"Error running job: {exc}")
        _banner(["Result:", " - 0 completed jobs", " - 1 failure"])
        import traceback

        traceback.print_exc()
        return 1
    bar.close()
    _save(root, name, total, int(net["linear"]), meta, final=True, experts=experts)
    if sampling:
        _sample(root, total, _sample_items(sample))
    logger.close()
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1]))


if __name__ == "__main__":
    main()
