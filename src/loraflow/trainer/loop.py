"""The builtin Flux LoRA training loop: one readable function, in the style of diffusers' examples.

load -> attach LoRA -> cache latents and text embeddings -> resume if a checkpoint exists -> train,
checkpointing and sampling on schedule -> export the LoRA. A SIGTERM finishes the current step,
saves a checkpoint and exits with STOPPED_EXIT, so a stop never loses more than one step.
"""

from __future__ import annotations

import math
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loraflow.hints import hint_for
from loraflow.trainer import checkpoint as ckpt
from loraflow.trainer import parallel
from loraflow.trainer.attention import configure_for_model
from loraflow.trainer.compiling import compile_blocks
from loraflow.trainer.compiling import decide as decide_compile
from loraflow.trainer.components import DTYPES, FluxParts, load_flux, pick_device
from loraflow.trainer.config import TrainerConfig
from loraflow.trainer.data import Cache, Resident, Sample, epoch_batches, load_pixels, load_samples
from loraflow.trainer.events import PAUSE_FILE, STOPPED_EXIT, emit
from loraflow.trainer.export import adapter_state, lora_metadata, lora_tensors, write_lora
from loraflow.trainer.flow import draw_noise, encode_images, encode_prompts, flow_loss, sample_latents
from loraflow.trainer.lora_format import target_regex
from loraflow.trainer.report import LossReport
from loraflow.trainer.sampling import render_samples

REPORT_EVERY_S = 1.0  # on a GPU: how often a progress event (and its loss read) is due at most


class StopFlag:
    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.requested = True
            emit("log", message=f"signal {signum}: stopping after this step with a checkpoint")

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def pause_step(out: Path) -> float:
    """The step to pause at that someone asked for while training runs (the notebook's STOP_AFTER_STEP): a
    signal arrives steps late on a fast model, a step number read before each checkpoint decision does not."""
    try:
        return int((out / PAUSE_FILE).read_text().strip())
    except (OSError, ValueError):
        return math.inf


def _optimizer(params: list[torch.nn.Parameter], cfg: TrainerConfig) -> torch.optim.Optimizer:
    name = cfg.optimizer
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]

            if torch.cuda.is_available():
                return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        except ImportError:
            pass
        emit("warning", message="adamw8bit needs bitsandbytes and a CUDA GPU; using AdamW")
    elif name == "prodigy":
        try:
            from prodigyopt import Prodigy  # type: ignore[import-not-found]

            return Prodigy(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        except ImportError:
            emit("warning", message="prodigy needs the prodigyopt package; using AdamW")
    elif name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params,
            lr=cfg.learning_rate,
            relative_step=False,
            scale_parameter=False,
            warmup_init=False,
            weight_decay=cfg.weight_decay,
        )
    fused = True if params and all(p.is_cuda for p in params) else None  # one kernel for the whole update
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)


def _rng_state(gen: torch.Generator, noise_gen: torch.Generator) -> dict[str, Any]:
    state = {
        "gen": gen.get_state(),
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if noise_gen is not gen:
        state["noise_gen"] = noise_gen.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(gen: torch.Generator, noise_gen: torch.Generator, state: dict[str, Any]) -> None:
    gen.set_state(state["gen"])
    if noise_gen is not gen and "noise_gen" in state:
        noise_gen.set_state(state["noise_gen"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _quiet(event: str, **data: Any) -> None:
    """What a process other than rank 0 reports: nothing (its errors still reach __main__'s handler)."""


def _cache_everything(
    parts: FluxParts, cfg: TrainerConfig, samples: list[Sample], cache: Cache, dataset_dir: Path, say: Any = emit
) -> None:
    todo_images = sorted({(s.name, s.sha256, s.size) for s in samples})
    captions = sorted({s.caption for s in samples} | {""})
    total = len(todo_images) + len(captions)
    done = 0
    for name, sha, size in todo_images:
        if cache.get("latents", sha, size) is None:
            pixels = load_pixels(dataset_dir / name, size).unsqueeze(0)
            cache.put("latents", {"params": encode_images(parts, pixels)[0]}, sha, size)
        done += 1
        say("caching", done=done, total=total)
    for caption in captions:
        if cache.get("text", caption, cfg.max_sequence_length) is None:
            t5, pooled = encode_prompts(parts, [caption], cfg.max_sequence_length)
            cache.put("text", {"t5": t5[0], "pooled": pooled[0]}, caption, cfg.max_sequence_length)
        done += 1
        say("caching", done=done, total=total)


def _batch(
    data: Resident,
    cfg: TrainerConfig,
    samples: list[Sample],
    idx: list[int],
    gen: torch.Generator,
    noise_gen: torch.Generator,
    parts: FluxParts,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch on the training device. `gen` (host) makes the caption-dropout decisions, `noise_gen`
    (the device's; the same generator on a CPU) draws the latents, so no step waits on the GPU."""
    latents, t5s, pooled = [], [], []
    shift, scale = parts.vae.config.shift_factor or 0.0, parts.vae.config.scaling_factor
    for i in idx:
        s = samples[i]
        latents.append(sample_latents(data.latents(s).unsqueeze(0), noise_gen, shift, scale)[0])
        drop = cfg.caption_dropout > 0 and float(torch.rand(1, generator=gen)) < cfg.caption_dropout
        t5, pool = data.text("" if drop else s.caption)
        t5s.append(t5)
        pooled.append(pool)
    return torch.stack(latents), torch.stack(t5s), torch.stack(pooled)


def total_steps(cfg: TrainerConfig, n_batches: int, global_batches: int) -> int:
    """Optimizer steps of the run; `global_batches` micro-batches make one step (all processes together)."""
    if cfg.steps:
        return cfg.steps
    assert cfg.epochs is not None
    return max(1, math.ceil(n_batches * cfg.epochs / global_batches))


After = Callable[[FluxParts, int], None]


def train(cfg: TrainerConfig, stop: StopFlag | None = None, after: After | None = None) -> int:
    """Run (or resume) training; returns the process exit code. Under `accelerate launch` every process runs
    this, sharing each step's global batch (trainer/parallel.py); rank 0 alone reports, saves and samples.

    `after(parts, total)` runs on rank 0 once the final LoRA is written, with the base model still loaded and
    the optimizer's memory freed: the result check in this process (evaluation/after_training.py), so the
    check does not load the base model a second time."""
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig

    stop = stop or StopFlag()
    out = Path(cfg.output_dir)
    ckpt_root, sample_root = out / "checkpoints", out / "samples"
    group = parallel.join(cfg.device, cfg.ddp_timeout_s)
    say = emit if group.main else _quiet
    device = group.device or pick_device(cfg.device)
    dtype = DTYPES[cfg.precision]
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)

    say("phase", phase="loading_model", device=str(device), processes=group.world)
    parts = load_flux(cfg.model_path, device, cfg.precision, cfg.quantize)
    tokens = max((r // 16) ** 2 for r in cfg.resolutions) + cfg.max_sequence_length
    attention = configure_for_model(parts.transformer, device, tokens, dtype)
    say("log", message=attention.message(), attention=attention.backend)
    torch.manual_seed(cfg.seed)
    parts.transformer.add_adapter(
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=target_regex(cfg.targets),
        )
    )
    params = [p for p in parts.transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # LoRA weights train in fp32 whatever the base precision
    if cfg.gradient_checkpointing:
        parts.transformer.enable_gradient_checkpointing()
    compiled, why = decide_compile(cfg.compile, device.type, cfg.gradient_checkpointing, cfg.quantize)
    say("log", message=why, compiled=compiled)
    if compiled:
        compile_blocks(parts.transformer)
    optimizer = _optimizer(params, cfg)

    say("phase", phase="caching")
    dataset_dir = Path(cfg.dataset_dir)
    samples = load_samples(dataset_dir, cfg.resolutions, cfg.repeats)
    cache = Cache(out / "cache", model_key=f"{Path(cfg.model_path).resolve()}")
    with group.main_first():  # rank 0 encodes; the others wait, then find every entry cached
        _cache_everything(parts, cfg, samples, cache, dataset_dir, say)
    data = Resident(cache, samples, cfg.max_sequence_length, device, dtype)
    # No prompts in the spec: sample with the dataset's own captions (the first two, in a fixed order).
    sample_prompts = cfg.sample_prompts or sorted({s.caption for s in samples if s.caption})[:2]
    sample_prompts = sample_prompts if group.main else []
    sample_embeds = [encode_prompts(parts, [p], cfg.max_sequence_length) for p in sample_prompts]
    if device.type == "cuda":  # encoders are done: give their memory to training
        parts.clip.to("cpu")
        parts.t5.to("cpu")
        torch.cuda.empty_cache()

    latest, skipped = ckpt.latest_valid(ckpt_root)
    for bad in skipped:
        say("warning", message=f"skipping damaged checkpoint {bad.path.name}: {bad.reason}")
    adapter, state = ckpt.load_checkpoint(latest.path) if latest is not None else ({}, {})
    # A resumed job keeps the global batch it started with, whatever the processes now: fewer GPUs accumulate more.
    global_batches = int(state.get("global_batches", cfg.processes * cfg.gradient_accumulation))
    try:
        share = group.share(global_batches)
    except parallel.SplitError as exc:
        say("error", code="bad_input", message=str(exc),
            hint=f"set compute.gpus to a number that divides {global_batches}")
        return 1
    if group.world > 1 or global_batches != cfg.gradient_accumulation:
        say("log", message=f"{group.world} process(es) x batch {cfg.batch_size} x accumulation {share}: "
            f"a global batch of {global_batches * cfg.batch_size}", processes=group.world, accumulation=share)
    n_batches = len(epoch_batches(samples, cfg.batch_size, cfg.seed, 0))
    total = total_steps(cfg, n_batches, global_batches)
    scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=total
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = gen if device.type == "cpu" else torch.Generator(device).manual_seed(cfg.seed)
    step = 0
    if latest is not None:
        named = dict(parts.transformer.named_parameters())
        for name, tensor in adapter.items():
            named[name].data.copy_(tensor.to(named[name].device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(gen, noise_gen, state["rng"])
        step = int(state["step"])
        say("resumed", step=step, total=total, checkpoint=str(latest.path.relative_to(out)))
    model = group.wrap(parts.transformer)  # DDP with several processes; the transformer itself in one

    def checkpoint_now(at: int) -> None:
        began = time.monotonic()
        micro = at * global_batches
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(gen, noise_gen),
            "step": at,
            "total": total,
            "global_batches": global_batches,
            "epoch": micro // n_batches,
            "batch_in_epoch": micro % n_batches,
        }
        path = ckpt.save_checkpoint(
            ckpt_root,
            at,
            adapter_state(parts.transformer),
            state,
            lora_tensors(parts.transformer, cfg),
            lora_metadata(cfg, at),
            cfg.keep_last,
        )
        say("checkpoint", step=at, path=str(path.relative_to(out)), took_s=round(time.monotonic() - began, 3))

    def sample_now(at: int) -> None:
        if not sample_prompts:
            return
        began = time.monotonic()
        index = render_samples(
            parts,
            sample_prompts,
            sample_embeds,
            sample_root,
            at,
            width=cfg.sample_width,
            height=cfg.sample_height,
            seed=cfg.sample_seed,
            guidance=cfg.sample_guidance,
            steps=cfg.sample_steps,
        )
        took = round(time.monotonic() - began, 3)  # the whole round's: the job's timing by phase reads it
        for item in index:
            say("sample", step=at, path=f"samples/{item['file']}", prompt=item["prompt"], round_s=took)

    say("phase", phase="training", total=total, start_step=step)
    parts.transformer.train()
    started, start_step = time.monotonic(), step
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and device.type == "cuda" else None
    autocast = torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda" and dtype != torch.float32)
    batches_cache: dict[int, list[list[int]]] = {}
    # On a GPU no sync per step; several processes already meet every step (the stop vote), so they read it too.
    report = LossReport(REPORT_EVERY_S if device.type == "cuda" and group.world == 1 else 0.0)
    while step < total:
        loss_sum = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
        mine = 0
        for micro_i in range(global_batches):
            micro = step * global_batches + micro_i
            epoch, pos = divmod(micro, n_batches)
            if epoch not in batches_cache:
                batches_cache = {epoch: epoch_batches(samples, cfg.batch_size, cfg.seed, epoch)}
            latents, t5, pooled = _batch(data, cfg, samples, batches_cache[epoch][pos], gen, noise_gen, parts)
            drawn = draw_noise(latents, noise_gen, cfg.timestep_sampling, cfg.timestep_shift)
            if not group.owns(micro_i, global_batches):
                continue  # another process trains it; its random numbers are drawn here too, in the same order
            mine += 1
            with group.syncing(model, sync=mine == share):  # DDP's all-reduce on this process's last one
                with autocast:
                    loss = flow_loss(
                        parts,
                        latents,
                        t5,
                        pooled,
                        noise_gen,
                        sampling=cfg.timestep_sampling,
                        shift=cfg.timestep_shift,
                        guidance=cfg.guidance_scale,
                        dtype=dtype,
                        model=model,
                        drawn=drawn,
                    )
                loss = loss / share
                (scaler.scale(loss) if scaler else loss).backward()
            loss_sum += loss.detach().to(loss_sum.dtype)
        if scaler:
            scaler.unscale_(optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        report.add(group.mean(loss_sum))
        pause = stop.requested or (cfg.stop_after_step is not None and step >= cfg.stop_after_step)
        pause = group.agree(pause or step >= pause_step(out))
        save = step % cfg.checkpoint_every == 0 or step == total or pause
        sample = bool(cfg.sample_every) and step % cfg.sample_every == 0 and step != total
        if report.due(forced=save or sample):
            mean_loss = report.read()
            if not math.isfinite(mean_loss):  # NaN/inf poisons the weights and every step after: fail unsaved
                say("error", code="nan_loss", message=f"loss is not finite ({mean_loss}) at step {step}",
                    hint=hint_for("nan_loss"))
                group.finish()
                return 1
            elapsed = time.monotonic() - started
            rate = (step - start_step) / elapsed if elapsed > 0 else 0.0
            say(
                "progress",
                step=step,
                total=total,
                loss=round(mean_loss, 6),
                lr=scheduler.get_last_lr()[0],
                rate=round(rate, 4),
                elapsed_s=round(elapsed, 2),
                eta_s=round((total - step) / rate, 1) if rate else None,
            )
        if save and group.main:
            checkpoint_now(step)
        if sample and group.main:
            parts.transformer.eval()
            sample_now(step)
            parts.transformer.train()
        if pause and step < total:
            if group.main:
                (out / PAUSE_FILE).unlink(missing_ok=True)  # a pause request is honoured once; a resume goes on
            say("stopped", step=step, total=total)
            group.finish()
            return STOPPED_EXIT

    group.finish()
    if not group.main:
        return 0
    parts.transformer.eval()
    final = out / f"{cfg.name}.safetensors"
    write_lora(final, lora_tensors(parts.transformer, cfg), lora_metadata(cfg, total))
    if cfg.sample_at_end:
        sample_now(total)
    if after is not None:
        optimizer.state.clear()  # its moments are as large as the LoRA twice over: give them to the check
        after(parts, total)
    emit("done", step=total, total=total, lora=str(final.relative_to(out)))
    return 0
