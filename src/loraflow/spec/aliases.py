"""Other trainers' names for loraflow's spec keys, so a user coming from kohya, ai-toolkit or SimpleTuner
who types `network.dim` or `training.lr` is told the key they meant instead of only "unknown key".

Spelling suggestions (difflib) cannot find these: `dim` and `rank` share no letters. The table is keyed by
the section the unknown key sits in ("" for the top level) and gives the loraflow path to use instead."""

from __future__ import annotations

# section -> {their name: our full key path}
_BY_SECTION: dict[str, dict[str, str]] = {
    "network": {
        "dim": "network.rank",
        "network_dim": "network.rank",
        "linear": "network.rank",
        "lora_rank": "network.rank",
        "r": "network.rank",
        "network_alpha": "network.alpha",
        "linear_alpha": "network.alpha",
        "lora_alpha": "network.alpha",
        "network_dropout": "network.dropout",
        "lora_dropout": "network.dropout",
        "target_modules": "network.targets",
    },
    "training": {
        "lr": "training.learning_rate",
        "unet_lr": "training.learning_rate",
        "max_train_steps": "training.steps",
        "train_steps": "training.steps",
        "max_train_epochs": "training.epochs",
        "num_train_epochs": "training.epochs",
        "train_batch_size": "training.batch_size",
        "gradient_accumulation_steps": "training.gradient_accumulation",
        "optimizer_type": "training.optimizer",
        "mixed_precision": "training.precision",
        "dtype": "training.precision",
        "lr_warmup": "training.lr_warmup_steps",
        "noise_scheduler": "training.timestep_sampling",
        "timestep_type": "training.timestep_sampling",
        "discrete_flow_shift": "training.timestep_shift",
        "caption_dropout_rate": "dataset.caption.dropout_rate",
        "save_every": "checkpointing.every_n_steps",
        "save_every_n_steps": "checkpointing.every_n_steps",
        "sample_every_n_steps": "sampling.every_n_steps",
        "sample_every": "sampling.every_n_steps",
        "network_dim": "network.rank",
        "network_alpha": "network.alpha",
    },
    "sampling": {
        "sample_every": "sampling.every_n_steps",
        "sample_every_n_steps": "sampling.every_n_steps",
        "sample_steps": "sampling.steps",
        "walk_seed": "sampling.seed",
        "guidance": "sampling.guidance_scale",
        "cfg": "sampling.guidance_scale",
    },
    "checkpointing": {
        "save_every": "checkpointing.every_n_steps",
        "save_every_n_steps": "checkpointing.every_n_steps",
        "max_step_saves_to_keep": "checkpointing.keep_last",
        "save_last_n_steps": "checkpointing.keep_last",
    },
    "dataset": {
        "folder_path": "dataset.path",
        "train_data_dir": "dataset.path",
        "image_dir": "dataset.path",
        "instance_prompt": "dataset.trigger_word",
        "trigger": "dataset.trigger_word",
        "caption_ext": "dataset.caption_extension",
        "num_repeats": "dataset.repeats",
        "caption_dropout_rate": "dataset.caption.dropout_rate",
        "shuffle_caption": "dataset.caption.shuffle_tags",
        "shuffle_tokens": "dataset.caption.shuffle_tags",
        "resolution": "training.resolution",
    },
    "": {
        "train": "training",
        "sample": "sampling",
        "save": "checkpointing",
        "datasets": "dataset",
        "model": "base_model",
        "pretrained_model_name_or_path": "base_model",
        "trigger_word": "dataset.trigger_word",
        "output_name": "name",
        "steps": "training.steps",
        "learning_rate": "training.learning_rate",
        "lr": "training.learning_rate",
        "resolution": "training.resolution",
        "rank": "network.rank",
        "network_dim": "network.rank",
        "network_alpha": "network.alpha",
        "vram_preset": "training.vram_preset",
        "provider": "compute.provider",
    },
}


def other_trainer_key(section: str, key: str) -> str | None:
    """The loraflow key path another trainer's `key` (found in `section`) stands for, if it is a known one."""
    return _BY_SECTION.get(section, {}).get(key.lower())
