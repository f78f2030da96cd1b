"""The builtin engine's trainer: flow-matching Flux LoRA training on diffusers + peft."""
