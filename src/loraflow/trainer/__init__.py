"""The builtin engine's trainer: flow-matching Flux LoRA training on diffusers + peft, run as its own
process from one config file; it imports nothing above the spec."""
