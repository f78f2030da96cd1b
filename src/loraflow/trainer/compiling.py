"""Whether the trainer compiles the transformer's repeated blocks with torch.compile, and doing it.

Measured on an H200 in one bench run (`bench/results/gpu_step.json`, full FLUX.1-dev geometry, rank 16,
batch 1, no checkpointing, torch 2.11): regional compilation (diffusers' `compile_repeated_blocks`: each
double and single block is compiled once and reused 19 / 38 times, so it costs a minute, not ten) took
1024 px from 0.633 to 0.443 s/step and 512 px from 0.368 to 0.228, with less peak memory (50.4 vs 56.5 GiB).

`auto` therefore compiles where it was measured to win: on CUDA, without gradient checkpointing, on an
unquantized base. Elsewhere it is not the default until a bench shows it wins there too: checkpointed
and quantized blocks were not measured compiled, and on the CPU inductor needs a C compiler and the tiny
model's pinned numbers must stay put. `on` compiles wherever asked; `off` never.
"""

from __future__ import annotations

from typing import Any, Literal

Mode = Literal["auto", "on", "off"]

# The backend torch.compile uses; tests swap in "aot_eager" (the same graph capture, no C compiler).
BACKEND = "inductor"


def decide(mode: Mode, device_type: str, gradient_checkpointing: bool, quantize: str) -> tuple[bool, str]:
    """(compile?, the reason, for the log)."""
    if mode == "off":
        return False, "compile: off (training.compile: off)"
    if mode == "on":
        return True, "compile: on (training.compile: on)"
    if device_type != "cuda":
        return False, f"compile: off (auto: not measured to win on {device_type})"
    if gradient_checkpointing:
        return False, "compile: off (auto: not measured with gradient checkpointing; training.compile: on to try)"
    if quantize != "none":
        return False, f"compile: off (auto: not measured on a {quantize} base; training.compile: on to try)"
    return True, "compile: on (auto: regional compile measured faster on CUDA, see bench/README.md)"


def compile_blocks(transformer: Any) -> None:
    """Compile each repeated block once; compilation happens at the first step, after the LoRA layers are in.

    A dataset with several buckets changes the token count between steps: the second shape makes torch
    mark it dynamic instead of compiling once per bucket."""
    transformer.compile_repeated_blocks(backend=BACKEND)
