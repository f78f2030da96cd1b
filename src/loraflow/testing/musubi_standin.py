"""A stand-in for musubi-tuner's scripts (`<family>_cache_latents.py`, `<family>_cache_text_encoder_outputs.py`,
`<family>_train_network.py` at 30c658c4, for the families loraflow renders: wan, qwen_image, flux_kontext,
flux_2; the family is the script's own name, its differences in musubi_families): the arguments they take,
what they print (accelerator.print lines on stdout, Python's default `INFO:<logger>:<message>` records on
stderr, the `steps:` tqdm bar with avr_loss on stderr, redrawn by update() before set_postfix()), the files
they write (caches in each dataset's cache_directory named with the family's architecture,
`<name>-step00000010.safetensors` in the family's LoRA layout, `<name>-step00000010-state/` as accelerate's
save_state writes it, `sample/<name>_000010_00_<time>_<seed>_000.png`, the final `<name>.safetensors`) and their resume:
`--resume` loads the state and the step count restarts at 0 for another `--max_train_steps`.

Training refuses to start without the caches, as musubi does, so a test sees the cache steps ran first.
Faults for tests: MUSUBI_STANDIN_STEP_S seconds per step; MUSUBI_STANDIN_OOM_AT=N raises CUDA OOM at step N;
MUSUBI_STANDIN_INERT=1 saves LoRAs whose up matrices are all zero (`high`: only the
Wan 2.2 high-noise expert's run does).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import time
import tomllib
import zlib
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from loraflow.media.video import probe
from loraflow.testing.launch_record import record_launch
from loraflow.testing.musubi_families import Family, family_of, widths

IMAGES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEOS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")


def _logger(name: str) -> logging.Logger:
    logging.basicConfig(level=logging.INFO)  # musubi's own set-up: `INFO:<name>:<message>` on stderr
    return logging.getLogger(name)


def _datasets(config: str) -> list[dict]:
    doc = tomllib.loads(Path(config).read_text(encoding="utf-8"))
    return [{**doc.get("general", {}), **d} for d in doc["datasets"]]


def _items(ds: dict) -> list[Path]:
    if "image_directory" in ds:
        return sorted(p for p in Path(ds["image_directory"]).iterdir() if p.suffix.lower() in IMAGES)
    return sorted(p for p in Path(ds["video_directory"]).iterdir() if p.suffix.lower() in VIDEOS)


def _latent_names(ds: dict, item: Path, arch: str) -> list[str]:
    """image_video_dataset's cache names: `<stem>_<W>x<H>_<arch>` for an image; for a clip one per target length
    that fits (head extraction), `<stem>_<start:05d>-<frames:03d>_<W>x<H>_<arch>`. W x H is the item's bucket
    in musubi; here simply the dataset's resolution (loraflow never reads cache names)."""
    w, h = ds.get("resolution", [960, 544])
    if "image_directory" in ds:
        return [f"{item.stem}_{w:04d}x{h:04d}_{arch}.safetensors"]
    with item.open("rb") as f:
        frames = probe(f, item.name).frames
    return [f"{item.stem}_00000-{t:03d}_{w:04d}x{h:04d}_{arch}.safetensors" for t in ds["target_frames"] if t <= frames]


def _cache(argv: list[str], kind: str, fam: Family) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset_config", required=True)
    p.add_argument("--vae" if kind == "latents" else "--t5" if fam.prefix == "wan" else "--text_encoder1"
                   if fam.prefix == "flux_kontext" else "--text_encoder", required=True)
    p.add_argument("--model_version")
    p.add_argument("--skip_existing", action="store_true")
    args, _ = p.parse_known_args(argv)
    arch = fam.architecture(args)
    log = _logger("__main__")  # each script's own logger, run as a script
    log.info(f"Load dataset config from {args.dataset_config}")
    if kind == "latents":
        log.info(fam.model_line.format(vae=args.vae))
    else:
        for line in fam.text_lines:
            log.info(line.format(**vars(args)))
    for i, ds in enumerate(_datasets(args.dataset_config)):
        items = _items(ds)
        key = "images" if "image_directory" in ds else "videos"
        log.info(f"glob {key} in {ds.get('image_directory') or ds.get('video_directory')}")
        log.info(f"found {len(items)} {key}")
        log.info(f"Encoding dataset [{i}]")
        cache = Path(ds["cache_directory"])
        cache.mkdir(parents=True, exist_ok=True)
        for item in tqdm(items, file=sys.stderr):
            names = _latent_names(ds, item, arch) if kind == "latents" else [f"{item.stem}_{arch}_te.safetensors"]
            for name in names:
                if not (args.skip_existing and (cache / name).exists()):
                    save_file({"x": torch.zeros(2)}, cache / name)
    return 0


def cache_latents(argv: list[str] | None = None) -> int:
    return _cache(sys.argv[1:] if argv is None else argv, "latents", family_of(sys.argv[0]))


def cache_text_encoder_outputs(argv: list[str] | None = None) -> int:
    return _cache(sys.argv[1:] if argv is None else argv, "te", family_of(sys.argv[0]))


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    for name in ("task", "dit", "dit_high_noise", "vae", "t5", "dataset_config", "output_dir", "output_name",
                 "resume", "sample_prompts", "network_module", "model_version"):
        p.add_argument(f"--{name}")
    for name in ("network_dim", "max_train_steps", "save_every_n_steps", "save_last_n_steps",
                 "save_last_n_steps_state", "sample_every_n_steps", "gradient_accumulation_steps"):
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--network_alpha", type=float, default=1.0)
    p.add_argument("--save_state", action="store_true")
    p.add_argument("--network_args", nargs="*")
    args, _ = p.parse_known_args(argv)
    return args


def _lora(args: argparse.Namespace, seed: int) -> dict[str, torch.Tensor]:
    """The family's network module's key layout: lora_unet_<block>_<module> with lora_down/lora_up/alpha, for
    every block of the model (Wan 2.1 1.3B: 30, the 14B models: 40; Qwen-Image: 60; FLUX.1 Kontext: 19 double
    and 38 single; FLUX.2 by version) and every Linear the module adapts there, minus what `exclude_patterns`
    names; 16 wide (64 in the MLP) so it costs nothing. MUSUBI_STANDIN_INERT=1 leaves the up matrices zero,
    as a run that never stepped does."""
    rank, alpha = args.network_dim, args.network_alpha
    gen = torch.Generator().manual_seed(seed + zlib.crc32((args.dit or "").encode()))  # each DiT its own LoRA
    which = os.environ.get("MUSUBI_STANDIN_INERT", "")  # "high": the Wan 2.2 high-noise expert's run only
    inert = which == "1" or (which == "high" and str(args.output_name).endswith("_high_noise"))
    excluded = " ".join(a for a in (args.network_args or []) if a.startswith("exclude_patterns"))
    out = {}
    for block, modules in family_of(sys.argv[0]).blocks(args):
        for module in modules:
            if "ffn" in excluded and module.startswith("ffn"):
                continue
            key = f"lora_unet_{block}_{module}"
            width_in, width_out = widths(module)
            up = torch.zeros(width_out, rank) if inert else torch.randn(width_out, rank, generator=gen) * 0.01
            out[f"{key}.lora_down.weight"] = torch.randn(rank, width_in, generator=gen).to(torch.bfloat16)
            out[f"{key}.lora_up.weight"] = up.to(torch.bfloat16)
            out[f"{key}.alpha"] = torch.tensor(alpha)
    return out


def _save_state(out: Path, name: str, step: int, seed: int, args: argparse.Namespace) -> None:
    """accelerate's save_state: the network's weights, optimizer, scheduler, then the random states."""
    state = out / f"{name}-step{step:08d}-state"
    state.mkdir(parents=True, exist_ok=True)
    save_file(_lora(args, seed), state / "model.safetensors")
    for f in ("optimizer.bin", "scheduler.bin"):
        (state / f).write_bytes(b"\0" * 64)
    (state / "random_states_0.pkl").write_bytes(b"\0" * 16)


def _remove_old(out: Path, name: str, step: int, args: argparse.Namespace, log: logging.Logger) -> None:
    """train_utils.get_remove_step_no and save_and_remove_state_stepwise."""
    every = args.save_every_n_steps
    spans = ((args.save_last_n_steps_state or args.save_last_n_steps, True), (args.save_last_n_steps, False))
    for span, state in spans:
        if span is None:
            continue
        old = step - span - 1
        old -= old % every
        if old < 0 or (state and old == 0):
            continue
        if state and (path := out / f"{name}-step{old:08d}-state").exists():
            log.info(f"removing old state: {path}")
            shutil.rmtree(path)
        elif not state and (path := out / f"{name}-step{old:08d}.safetensors").exists():
            print(f"removing old checkpoint: {path}", flush=True)
            path.unlink()


def _sample(out: Path, name: str, step: int, prompts: list[str], log: logging.Logger) -> None:
    log.info("")
    log.info(f"generating sample images at step / サンプル画像生成 ステップ: {step}")
    (out / "sample").mkdir(parents=True, exist_ok=True)
    for idx, line in enumerate(prompts):
        prompt, *flags = line.split(" --")
        opts = dict(f.split(" ", 1) for f in flags)
        log.info(f"prompt: {prompt}")
        log.info(f"height: {opts.get('h')}")
        log.info(f"width: {opts.get('w')}")
        log.info(f"frame count: {opts.get('f')}")
        for _ in tqdm(range(3), desc=f"Sampling timesteps for prompt {idx + 1}", file=sys.stderr):
            pass
        stamp = time.strftime("%Y%m%d%H%M%S")
        Image.new("RGB", (16, 16), (step % 255, 90, 40)).save(
            out / "sample" / f"{name}_{step:06d}_{idx:02d}_{stamp}_{opts.get('d', '0')}_000.png"
        )


def train(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    log = _logger("musubi_tuner.training.trainer_base")
    log_utils = logging.getLogger("musubi_tuner.utils.train_utils")
    out, name = Path(args.output_dir), args.output_name
    if not record_launch(out):
        return 0  # another rank of `accelerate launch --num_processes N`: rank 0 prints and saves
    fam = family_of(sys.argv[0])
    arch = fam.architecture(args)
    log.info(f"Load dataset config from {args.dataset_config}")
    datasets = _datasets(args.dataset_config)
    items = 0
    for ds in datasets:  # musubi trains from the caches alone: one item per latent cache file
        cached = list(Path(ds["cache_directory"]).glob(f"*_{arch}.safetensors"))
        if not cached or not list(Path(ds["cache_directory"]).glob(f"*_{arch}_te.safetensors")):
            log.error(f"no latent or text encoder cache in {ds['cache_directory']}: run the cache scripts first")
            return 1
        items += len(cached) * int(ds.get("num_repeats", 1))
    log.info(f"Loading DiT model from {args.dit}")
    logging.getLogger("__main__").info(fam.model_line.format(vae=args.vae))
    print(f"import network module: {args.network_module}", flush=True)
    print("prepare optimizer, data loader etc.", flush=True)
    seed = 0
    if args.resume:
        log.info(f"resume training from local state: {args.resume}")
        weights = load_file(str(Path(args.resume) / "model.safetensors"))  # a cut-short state fails here
        first = next(k for k in sorted(weights) if k.endswith(".lora_down.weight"))
        seed = int(weights[first].float().abs().sum() * 1000) % 997
    accumulation = args.gradient_accumulation_steps or 1
    batch = int(datasets[0].get("batch_size", 1))
    batches = math.ceil(items / batch)
    per_epoch = math.ceil(batches / accumulation)
    total = args.max_train_steps
    epochs = math.ceil(total / per_epoch)
    print("running training / 学習開始")
    print(f"  num train items / 学習画像、動画数: {items}")
    print(f"  num batches per epoch / 1epochのバッチ数: {batches}")
    print(f"  num epochs / epoch数: {epochs}")
    print(f"  batch size per device / バッチサイズ: {', '.join(str(batch) for _ in datasets)}")
    print(f"  gradient accumulation steps / 勾配を合計するステップ数 = {accumulation}")
    print(f"  total optimization steps / 学習ステップ数: {total}", flush=True)
    prompts = []
    if args.sample_prompts:
        prompts = [ln for ln in Path(args.sample_prompts).read_text(encoding="utf-8").splitlines() if ln.strip()]
    step_s = float(os.environ.get("MUSUBI_STANDIN_STEP_S", "0.01"))
    oom_at = int(os.environ.get("MUSUBI_STANDIN_OOM_AT", "0"))
    bar = tqdm(range(total), smoothing=0, desc="steps", file=sys.stderr)
    losses: list[float] = []
    global_step = 0
    for epoch in range(epochs):
        print(f"\nepoch {epoch + 1}/{epochs}", flush=True)
        for micro in range(batches):
            time.sleep(step_s)
            loss = 0.12 * math.exp(-(global_step + seed) / 200) + 0.005 * math.cos(micro)
            if (micro + 1) % accumulation == 0 or micro == batches - 1:
                if oom_at and global_step + 1 == oom_at:
                    bar.close()
                    sys.stderr.write(
                        f'Traceback (most recent call last):\n  File "{fam.prefix}_train_network.py", line 740\n'
                        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
                    )
                    return 1
                if global_step == 0:
                    bar.reset()
                bar.update(1)
                global_step += 1
                if args.sample_every_n_steps and global_step % args.sample_every_n_steps == 0 and prompts:
                    _sample(out, name, global_step, prompts, log)
                if args.save_every_n_steps and global_step % args.save_every_n_steps == 0:
                    out.mkdir(parents=True, exist_ok=True)
                    ckpt = out / f"{name}-step{global_step:08d}.safetensors"
                    print(f"\nsaving checkpoint: {ckpt}", flush=True)
                    save_file(_lora(args, global_step), ckpt,
                              metadata={"ss_steps": str(global_step), "ss_network_dim": str(args.network_dim)})
                    if args.save_state:
                        log_utils.info("")
                        log_utils.info(f"saving state at step {global_step}")
                        _save_state(out, name, global_step, global_step, args)
                    _remove_old(out, name, global_step, args, log_utils)
                _hold(global_step)
            losses.append(loss)
            window = losses[-batches:]
            bar.set_postfix(avr_loss=sum(window) / len(window))
            if global_step >= total:
                break
        if global_step >= total:
            break
    bar.close()
    if args.save_state:
        log_utils.info("")
        log_utils.info("saving last state.")
        state = out / f"{name}-state"
        state.mkdir(parents=True, exist_ok=True)
        (state / "random_states_0.pkl").write_bytes(b"\0" * 16)
    final = out / f"{name}.safetensors"
    print(f"\nsaving checkpoint: {final}", flush=True)
    save_file(_lora(args, global_step), final, metadata={"ss_steps": str(global_step)})
    log.info("model saved.")
    return 0


def main(entry: str) -> None:
    sys.exit({"cache_latents": cache_latents, "cache_te": cache_text_encoder_outputs, "train": train}[entry]())


def _hold(step: int) -> None:
    """A test's gate: at MUSUBI_STANDIN_HOLD_AT the run waits until MUSUBI_STANDIN_RELEASE exists, so a test
    can act at a known step (lose the host mid-run) whatever the machine's load, instead of racing a pace."""
    hold_at, release = int(os.environ.get("MUSUBI_STANDIN_HOLD_AT", "0")), os.environ.get("MUSUBI_STANDIN_RELEASE")
    if hold_at and step == hold_at and release:
        while not Path(release).exists():
            time.sleep(0.05)
