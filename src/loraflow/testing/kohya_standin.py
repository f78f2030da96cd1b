"""A stand-in for sd-scripts' `flux_train_network.py` / `sdxl_train_network.py`: the same arguments it
accepts, the same console output (print() lines on stdout, logger records on stdout with
--console_log_simple or Rich-formatted and wrapped at 80 columns on stderr without it, the `steps:` tqdm
bar on stderr), the same files (`<name>-step00000100.safetensors`, `<name>-step00000100-state/` with
`train_state.json`, `sample/<name>_000100_00_<time>.png`, the final `<name>.safetensors`) and the same
resume arithmetic as train_network.py at 48d368fa: with --skip_until_initial_step the initial step is
multiplied by the gradient accumulation, whole epochs of `ceil(batches / accumulation)` steps are skipped
by taking whole epochs of *batches* off it, and what is left becomes global_step (so resuming at step N of
an L-batch epoch restarts the step count at N mod L, trains to the end of the last epoch and names files
by that run-local step); the bar counts `max_train_steps - initial_step` from 0.

Faults for tests: KOHYA_STANDIN_OOM_AT=N raises CUDA OOM at step N; KOHYA_STANDIN_NAN_AT=N makes the loss NaN
from step N; KOHYA_STANDIN_STEP_S seconds per step (0.01 by default: above tqdm's 0.1 s `mininterval` each
step prints two bar lines, as on a real GPU, the first with the previous step's avr_loss);
KOHYA_STANDIN_INERT=1 saves every LoRA with all-zero up matrices (a run that never moved them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from loraflow.testing.fake_lora import kohya_lora
from loraflow.testing.launch_record import record_launch


class Log:
    def __init__(self, simple: bool) -> None:
        self.simple = simple

    def info(self, message: str, where: str = "train_network.py:1024") -> None:
        if self.simple:
            print(message, flush=True)
            return
        # Rich's layout when not a TTY: time, level, message wrapped to the column, file:line at the right.
        width = 80 - 29 - len(where) - 1
        words, lines, current = message.split(" "), [], ""
        for word in words:
            while len(word) > width:  # a long path is hard-broken
                if current:
                    lines.append(current)
                    current = ""
                lines.append(word[:width])
                word = word[width:]
            if current and len(current) + 1 + len(word) > width:
                lines.append(current)
                current = word
            else:
                current = f"{current} {word}" if current else word
        lines.append(current)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for i, text in enumerate(lines):
            prefix = f"{stamp} INFO     " if i == 0 else " " * 29
            tail = where if i == 0 else ""
            sys.stderr.write(f"{prefix}{text.ljust(width)} {tail}".rstrip() + "\n")
        sys.stderr.flush()


def _inert() -> bool:  # read at each save, like the other faults
    return os.environ.get("KOHYA_STANDIN_INERT") == "1"


def loss_at(step: int, total: int) -> float:
    """The loss the stand-in trains to at a step (1-based)."""
    return 0.4 * math.exp(-step / total) + 0.02 * math.cos(step)


def avr_loss(losses: list[float], batches: int) -> float:
    """sd-scripts' `avr_loss`: the moving average over the last epoch's worth of batches."""
    window = losses[-batches:]
    return sum(window) / len(window)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    for name in (
        "pretrained_model_name_or_path",
        "clip_l",
        "t5xxl",
        "ae",
        "output_dir",
        "output_name",
        "dataset_config",
        "sample_prompts",
        "resume",
        "network_dim",
        "network_alpha",
        "max_train_steps",
        "max_train_epochs",
        "save_every_n_steps",
        "save_last_n_steps",
        "save_last_n_steps_state",
        "sample_every_n_steps",
        "sample_every_n_epochs",
        "initial_step",
        "learning_rate",
        "gradient_accumulation_steps",
    ):
        p.add_argument(f"--{name}")
    for flag in (
        "save_state",
        "save_state_on_train_end",
        "skip_until_initial_step",
        "console_log_simple",
        "network_train_unet_only",
    ):
        p.add_argument(f"--{flag}", action="store_true")
    args, _ = p.parse_known_args(argv)
    return args


def save_state(out: Path, name: str, step: int, epoch: int, log: Log, final: bool = False) -> None:
    state = out / (f"{name}-state" if final else f"{name}-step{step:08d}-state")
    tmp = out / (state.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, tmp / "model.safetensors")
    for f in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        (tmp / f).write_bytes(b"\0" * 64)
    (tmp / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))
    shutil.rmtree(state, ignore_errors=True)
    tmp.replace(state)
    log.info(f"save train state to {state}/train_state.json at epoch {epoch} step {step}")


def removals(every: int, step: int, keep: int | None, keep_state: int | None) -> list[tuple[int, bool]]:
    """train_util.get_remove_step_no: the step `last_n + 1` before, rounded down to the save cadence."""
    out = []
    for span, is_state in ((keep, False), (keep_state, True)):
        if span is None:
            continue
        old = step - span - 1
        old -= old % every
        if old > 0 or (old == 0 and not is_state):
            out.append((old, is_state))
    return out


def save_step(
    args: argparse.Namespace, out: Path, name: str, step: int, epoch: int, rank: int, alpha: float, total: int, log: Log
) -> None:
    path = out / f"{name}-step{step:08d}.safetensors"
    print(f"\nsaving checkpoint: {path}", flush=True)
    save_file(
        kohya_lora(rank, alpha, step, inert=_inert()),
        path,
        metadata={
            "ss_network_dim": str(rank),
            "ss_network_alpha": str(alpha),
            "ss_steps": str(step),
            "ss_max_train_steps": str(total),
            "ss_base_model_version": "flux1",
            "modelspec.architecture": "flux-1-dev/lora",
        },
    )
    if args.save_state:
        log.info(f"saving state at step {step}", "train_network.py:1100")
        save_state(out, name, step, epoch, log)


def sample(out: Path, name: str, step: int, prompts: list[str], log: Log) -> None:
    log.info(f"generating sample images at step / サンプル画像生成 ステップ: {step}", "flux_train_utils.py:100")
    (out / "sample").mkdir(exist_ok=True)
    for idx, prompt in enumerate(prompts):
        log.info(f"prompt: {prompt.split(' --')[0]}", "flux_train_utils.py:150")
        for _ in tqdm(range(3), file=sys.stderr):
            pass
        stamp = time.strftime("%Y%m%d%H%M%S")
        image = Image.new("RGB", (32, 32), (step % 255, 30, 200))
        image.save(out / "sample" / f"{name}_{step:06d}_{idx:02d}_{stamp}.png")


def resumed_step(resume: str, log: Log) -> int:
    """The step a `--resume` state folder was saved at, logged the way sd-scripts logs it."""
    log.info(f"resume training from local state: {resume}", "train_util.py:4500")
    state = json.loads((Path(resume) / "train_state.json").read_text())
    log.info(
        f"load train state from {resume}/train_state.json: {{'current_epoch': {state['current_epoch']}, "
        f"'current_step': {state['current_step']}}}",
        "train_network.py:1200",
    )
    return int(state["current_step"])


def print_plan(batches: int, epochs: int, accumulation: int, total: int) -> None:
    """sd-scripts' banner before the first step; the parser reads the total steps from it."""
    print("running training / 学習開始")
    print(f"  num train images * repeats / 学習画像の数×繰り返し回数: {batches}")
    print(f"  num batches per epoch / 1epochのバッチ数: {batches}")
    print(f"  num epochs / epoch数: {epochs}")
    print("  batch size per device / バッチサイズ: 1")
    print(f"  gradient accumulation steps / 勾配を合計するステップ数 = {accumulation}")
    print(f"  total optimization steps / 学習ステップ数: {total}", flush=True)


def prune(out: Path, name: str, old: Iterable[tuple[int, bool]], log: Log) -> None:
    """Delete the checkpoints and states past save_last_n_steps, with sd-scripts' own log lines."""
    for step, is_state in old:
        old_path = out / f"{name}-step{step:08d}{'-state' if is_state else '.safetensors'}"
        if old_path.exists():
            if is_state:
                log.info(f"removing old state: {old_path}", "train_util.py:5000")
                shutil.rmtree(old_path)
            else:
                print(f"removing old checkpoint: {old_path}")
                old_path.unlink()


def run(argv: list[str]) -> int:
    args = parse(argv)
    log = Log(args.console_log_simple)
    out, name = Path(args.output_dir), args.output_name
    if not record_launch(out):
        return 0  # another rank of `accelerate launch --num_processes N`: rank 0 prints and saves
    config = tomllib.loads(Path(args.dataset_config).read_text())
    image_dir = Path(config["datasets"][0]["subsets"][0]["image_dir"])
    images = [p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")]
    log.info("loading image sizes.", "train_util.py:2222")
    log.info("make buckets", "train_util.py:1000")
    log.info("caching latents...", "train_util.py:1111")
    rank, alpha = int(args.network_dim), float(args.network_alpha)
    log.info("create LoRA for FLUX all blocks: 304 modules.", "lora_flux.py:800")
    accumulation = int(args.gradient_accumulation_steps or 1)
    batches = sum(  # len(train_dataloader): one bucket per dataset here
        math.ceil(len(images) * int(sub.get("num_repeats", 1)) / int(ds.get("batch_size", 1)))
        for ds in config["datasets"]
        for sub in ds["subsets"]
    )
    per_epoch = math.ceil(batches / accumulation)  # optimizer steps an epoch
    total = int(args.max_train_steps) if args.max_train_steps else int(args.max_train_epochs) * per_epoch
    epochs = math.ceil(total / per_epoch)
    from_state = resumed_step(args.resume, log) if args.resume else None
    print_plan(batches, epochs, accumulation, total)
    initial = int(args.initial_step) if args.initial_step is not None else (from_state or 0)
    if initial > 0:
        assert total > initial, f"max_train_steps should be greater than initial step: {total} vs {initial}"
    epoch_to_start = 0
    if initial > 0:
        if args.skip_until_initial_step:
            log.info(f"skipping {initial} steps / {initial}ステップをスキップします", "train_network.py:1265")
            initial *= accumulation
            epoch_to_start = initial // per_epoch
        else:
            epoch_to_start = initial // per_epoch
            initial = 0
    global_step = 0
    if initial > 0:
        for skip_epoch in range(epoch_to_start):
            log.info(f"skipping epoch {skip_epoch + 1} because initial_step (multiplied) is {initial}")
            initial -= batches
        global_step = initial
    step_s = float(os.environ.get("KOHYA_STANDIN_STEP_S", "0.01"))
    oom_at = int(os.environ.get("KOHYA_STANDIN_OOM_AT", "0"))
    nan_at = int(os.environ.get("KOHYA_STANDIN_NAN_AT", "0"))
    every = int(args.save_every_n_steps or 0)
    keep = int(args.save_last_n_steps) if args.save_last_n_steps is not None else None
    keep_state = int(args.save_last_n_steps_state) if args.save_last_n_steps_state else keep
    sample_every = int(args.sample_every_n_steps or 0)
    if args.sample_every_n_epochs:
        sample_every = int(args.sample_every_n_epochs) * per_epoch
    prompts = (
        [ln for ln in Path(args.sample_prompts).read_text().splitlines() if ln.strip()] if args.sample_prompts else []
    )
    bar = tqdm(range(total - initial), smoothing=0, desc="steps", file=sys.stderr)
    losses: list[float] = []
    done = False
    for epoch in range(epoch_to_start, epochs):
        print(f"\nepoch {epoch + 1}/{epochs}\n", flush=True)
        skip, initial = max(initial, 0), 0
        trained = 0
        for batch in range(skip, batches):
            trained += 1
            if trained % accumulation and batch != batches - 1:
                # gradients accumulate, no optimizer step yet; sd-scripts still records the micro-batch's loss
                # and redraws the postfix (at the old count)
                losses.append(math.nan if nan_at and global_step + 1 >= nan_at else loss_at(global_step + 1, total))
                bar.set_postfix(avr_loss=avr_loss(losses, batches))
                continue
            step = global_step + 1
            if oom_at and step == oom_at:
                bar.close()
                sys.stderr.write(
                    'Traceback (most recent call last):\n  File "flux_train_network.py", line 559\n'
                    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.50 GiB\n"
                )
                return 1
            time.sleep(step_s)
            global_step = step
            # train_network.py's order: update() (a redraw with the previous avr_loss once 0.1 s passed since
            # the last one), sampling and saving, and only then set_postfix() with this step's avr_loss
            bar.update(1)
            if sample_every and step % sample_every == 0 and prompts:
                sample(out, name, step, prompts, log)
            if every and step % every == 0:
                save_step(args, out, name, step, epoch + 1, rank, alpha, total, log)
                prune(out, name, removals(every, step, keep, keep_state), log)
            losses.append(math.nan if nan_at and step >= nan_at else loss_at(step, total))
            bar.set_postfix(avr_loss=avr_loss(losses, batches))
            if global_step >= total:
                done = True
                break
        if done:
            break
    bar.close()
    if args.save_state_on_train_end:
        log.info("saving last state.", "train_network.py:1500")
        save_state(out, name, global_step, epochs, log, final=True)
    final = out / f"{name}.safetensors"
    print(f"\nsaving checkpoint: {final}", flush=True)
    save_file(
        kohya_lora(rank, alpha, global_step, inert=_inert()),
        final,
        metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(alpha), "ss_steps": str(global_step)},
    )
    log.info("model saved.", "train_network.py:1600")
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
