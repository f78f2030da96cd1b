"""When ai-toolkit, kohya or builtin cannot honour a value: each check returns why and the fix, or None."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loraflow.field_map.rules import PINS, Check, Refusal

if TYPE_CHECKING:
    from loraflow.spec import TrainSpec


# Flow-matching transformers ai-toolkit saves in PEFT layout; the presets' layer names exist in the first five.
FLOW_ARCHS = ("flux", "qwen_image", "flux_kontext", "qwen_image_edit", "chroma", "flux2", "wan")
NARROWABLE = FLOW_ARCHS[:5]


def flux_like(spec: TrainSpec) -> bool:
    return spec.catalog_entry.arch in FLOW_ARCHS


def alpha_forced(spec: TrainSpec) -> Refusal | None:
    n = spec.network
    if flux_like(spec) and n.alpha != n.rank:
        return (
            f"ai-toolkit saves {spec.catalog_entry.arch} LoRAs in PEFT layout and forces alpha = rank, so alpha "
            f"{n.alpha:g} with rank {n.rank} would train at strength 1.0 instead of {n.alpha / n.rank:g}",
            f"set network.alpha to {n.rank}, or use engine kohya or builtin, which honour alpha",
        )
    return None


def targets_aitk(spec: TrainSpec) -> Refusal | None:
    if isinstance(spec.network.targets, list):
        return ("ai-toolkit picks layers by preset only", "use targets all, default or attention, or engine builtin")
    if spec.catalog_entry.arch not in NARROWABLE and spec.network.targets != "default":
        return ("the presets name Flux and Qwen-Image layers", "use targets default (the engine's own layers)")
    return None


def targets_kohya(spec: TrainSpec) -> Refusal | None:
    t = spec.network.targets
    if isinstance(t, list):
        return ("kohya's lora_flux picks layers by type only", "use targets all or default, or engine builtin")
    if spec.catalog_entry.arch != "flux":
        return None if t == "default" else ("the presets name Flux layers", "use targets default")
    if t == "attention":
        return (
            "Flux single blocks fuse attention and MLP into linear1/linear2, so kohya cannot train attention alone",
            "use targets default or all, or engine builtin or ai-toolkit",
        )
    return None


def warmup_aitk(spec: TrainSpec) -> Refusal | None:
    t = spec.training
    if t.lr_warmup_steps and t.lr_scheduler != "constant":
        return (
            f"ai-toolkit has warmup only for the constant schedule, not for {t.lr_scheduler}",
            "set training.lr_warmup_steps: 0, use lr_scheduler: constant, or use engine kohya or builtin",
        )
    return None


def prodigy_aitk(spec: TrainSpec) -> Refusal | None:
    t = spec.training
    if t.optimizer == "prodigy" and t.learning_rate < 0.1:
        return (
            f"ai-toolkit replaces a Prodigy learning rate below 0.1 with 1.0, so {t.learning_rate:g} would not be used",
            "set training.learning_rate: 1.0 (Prodigy's own estimate; the default with prodigy), or use engine "
            "kohya or builtin",
        )
    return None


def ddpm(spec: TrainSpec) -> Refusal | None:
    if not flux_like(spec) and spec.training.timestep_sampling != "sigmoid":
        return (
            f"{spec.catalog_entry.arch} trains with its own DDPM timesteps; the sampling choices are flow-matching's",
            "remove training.timestep_sampling",
        )
    return None


def shift_aitk(spec: TrainSpec) -> Refusal | None:
    if found := ddpm(spec):
        return found
    if spec.training.timestep_sampling == "shift":
        return (
            "ai-toolkit's `shift` is a resolution-dependent shift of evenly spaced timesteps, not a fixed "
            "timestep_shift of logit-normal ones",
            "use timestep_sampling sigmoid (or uniform), or engine kohya or builtin for shift",
        )
    return None


def nf4(engine: str, fix: str) -> Check:
    def check(spec: TrainSpec) -> Refusal | None:
        if spec.training.quantize == "nf4":
            return (f"{engine} has no 4-bit NF4 base", fix)
        return None

    return check


def low_vram(engine: str, fix: str) -> Check:
    def check(spec: TrainSpec) -> Refusal | None:
        return (f"{engine} has no low_vram mode", fix) if spec.training.low_vram else None

    return check


def swap(engine: str, fix: str) -> Check:
    def check(spec: TrainSpec) -> Refusal | None:
        return (f"{engine} cannot swap blocks to the CPU", fix) if spec.training.blocks_to_swap else None

    return check


def compiling(engine: str) -> Check:
    def check(spec: TrainSpec) -> Refusal | None:
        if spec.training.compile == "on":
            return (f"{engine} is not compiled by loraflow", "set training.compile: auto, or use engine builtin")
        return None

    return check


def shuffle_builtin(spec: TrainSpec) -> Refusal | None:
    if spec.dataset.captions.shuffle_tags:
        return (
            "the builtin trainer encodes each caption once and reuses it, so tags cannot be reshuffled each step",
            "set dataset.captions.shuffle_tags: false, or use engine kohya or ai-toolkit",
        )
    return None


def pin(engine: str) -> Check:
    def check(spec: TrainSpec) -> Refusal | None:
        version, pin = spec.engine.version, PINS[engine]
        if version and not (version.startswith(pin) or (len(version) >= 7 and pin.startswith(version))):
            why = f"loraflow renders for and installs {engine} at its tested pin {pin} only"
            return (why, f"remove engine.version or set it to {pin}")
        return None

    return check


def no_version(spec: TrainSpec) -> Refusal | None:
    if spec.engine.version:
        return ("the builtin engine is the installed loraflow itself", "remove engine.version")
    return None


def one_gpu_aitk(spec: TrainSpec) -> Refusal | None:
    """Read at the pin (27a03a91): BaseSDTrainProcess.prepare_accelerator wraps the network in DDP but leaves
    `self.data_loader = self.accelerator.prepare(self.data_loader)` commented out and builds a plain shuffled
    DataLoader, so every process would train the same batches: N GPUs for the price of N, the speed of one."""
    if spec.compute.gpus > 1:
        return (
            f"at its pinned commit {PINS['ai-toolkit']} ai-toolkit does not split its data loader across processes "
            "(accelerator.prepare(data_loader) is commented out), so several GPUs would train the same batches",
            "set compute.gpus: 1, or use engine builtin or kohya, which train data-parallel",
        )
    return None


def at_end_on_cadence(engine: str) -> Check:
    """sd-scripts (48d368fa) and musubi (30c658c4) sample only when `global_step % sample_every_n_steps == 0`
    and have no round after the last step; sd-scripts ignores the step cadence once `sample_every_n_epochs`
    is given. So a final round exists only when the last step is on the cadence."""

    def check(spec: TrainSpec) -> Refusal | None:
        s, steps = spec.sampling, spec.training.steps
        if not (s.at_end and s.every_n_steps and s.prompts):
            return None
        if steps and (steps % s.every_n_steps == 0 or s.every_n_steps > steps):  # the latter: rendered = steps
            return None
        every = s.every_n_steps
        if steps is None:
            why = f"{engine} samples only every {every} steps and a run by epochs need not end on one"
            return (why, f"set training.steps to a multiple of {every}, or sampling.at_end: false")
        nearest = max(every, round(steps / every) * every)
        return (
            f"{engine} samples only every {every} steps, so step {steps} would get no final round",
            f"set training.steps to a multiple of {every} (e.g. {nearest}), sampling.every_n_steps to a divisor "
            f"of {steps}, or sampling.at_end: false",
        )

    return check


def adafactor_clip_aitk(spec: TrainSpec) -> Refusal | None:
    t = spec.training
    if t.optimizer == "adafactor" and t.max_grad_norm > 0:
        return (
            "ai-toolkit never clips gradients for Adafactor (SDTrainer skips clip_grad_norm_ for it), so "
            f"max_grad_norm {t.max_grad_norm:g} would not be applied",
            "set training.max_grad_norm: 0, use another optimizer, or use engine kohya or builtin, which clip it",
        )
    return None


def launched_by_accelerate(engine: str) -> Check:
    def check(spec: TrainSpec) -> Refusal | None:
        if spec.compute.gpus > 1 and spec.engine.options.get("launcher") == "python":
            return (
                f"{engine} starts one process per GPU only through `accelerate launch`, not plain python",
                "remove engine.options.launcher, or set compute.gpus: 1",
            )
        return None

    return check


def keep_tokens_aitk(spec: TrainSpec) -> Refusal | None:
    captions = spec.dataset.captions
    if captions.shuffle_tags and captions.keep_tokens > 0:
        return (
            "ai-toolkit's shuffle_tokens shuffles every tag, the trigger word too (its keep_tokens applies only "
            f"to token dropout), so the first {captions.keep_tokens} would not stay in place",
            "set dataset.captions.keep_tokens: 0, or use engine kohya, which keeps them in place",
        )
    return None
