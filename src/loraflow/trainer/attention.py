"""Which scaled-dot-product-attention kernel the trainer lets PyTorch use on this torch and GPU.

PyTorch picks among flash, memory-efficient, cuDNN and math kernels by itself. On Hopper with a recent
torch its pick (cuDNN) crashed Flux LoRA training with an illegal memory access in backward (H200,
torch 2.11 + cu130: issue 17), and a CUDA fault poisons the whole process: it cannot be caught and
retried. So the choice is made before training, in three steps:

1. combinations known to crash are switched off without being run;
2. the remaining fused kernels are tried in order (flash -> efficient -> cuDNN) with a forward+backward
   on the model's own head geometry that takes milliseconds, and the first that works is kept;
3. cuDNN stays off whenever flash or efficient works (they are the kernels training runs on most), and
   math always stays on as the last resort for shapes no fused kernel takes.

The choice sets torch's process-wide flags, so training and sampling (same process) share it. On a CPU
nothing is changed: the CPU kernels are not the ones that crashed, and the tiny model's numbers stay put.
`LORAFLOW_ATTENTION=flash|efficient|cudnn|math` forces one kernel (math = the portable, slow one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from packaging.version import Version

FUSED = ("flash", "efficient", "cudnn")
BACKENDS = (*FUSED, "math")
ENV = "LORAFLOW_ATTENTION"


@dataclass(frozen=True)
class AttentionChoice:
    """The kernel training will run on, and why each other one is off."""

    backend: str  # "flash" | "efficient" | "cudnn" | "math" | "default" (CPU: torch decides)
    disabled: dict[str, str] = field(default_factory=dict)

    def message(self) -> str:
        off = "; ".join(f"{name} off: {why}" for name, why in self.disabled.items())
        return f"attention: {self.backend}" + (f" ({off})" if off else "")


def known_bad(torch_version: str, capability: tuple[int, int]) -> dict[str, str]:
    """Backends that must not even be tried here (a CUDA fault cannot be recovered from in-process)."""
    bad: dict[str, str] = {}
    if capability[0] == 9 and Version(torch_version).release >= (2, 5):
        bad["cudnn"] = (
            f"cuDNN attention crashes Flux training on Hopper with torch {torch_version} (illegal memory access)"
        )
    return bad


def choose(
    torch_version: str,
    capability: tuple[int, int],
    probe: Callable[[str], None],
    forced: str | None = None,
) -> AttentionChoice:
    """Pick the kernel; `probe(backend)` runs the self-test and raises when that kernel fails."""
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{ENV}={forced!r}: use one of {', '.join(BACKENDS)}")
        return AttentionChoice(forced, {b: f"{ENV}={forced}" for b in FUSED if b != forced})
    disabled = known_bad(torch_version, capability)
    chosen = "math"
    for backend in FUSED:
        if backend in disabled:
            continue
        if chosen != "math":  # a kernel works: efficient stays on as torch's fallback, cuDNN goes off untried
            if backend == "cudnn":
                disabled[backend] = f"not needed: {chosen} works"
            continue
        try:
            probe(backend)
        except RuntimeError as exc:
            if is_cuda_fault(str(exc)):
                raise  # the CUDA context is gone: nothing after this can run in this process
            disabled[backend] = f"self-test failed: {str(exc).splitlines()[0][:200]}"
            continue
        chosen = backend
    return AttentionChoice(chosen, disabled)


def is_cuda_fault(text: str) -> bool:
    from loraflow.hints import CUDA_FAULT

    return bool(CUDA_FAULT.search(text))


def _sdp_backend(name: str) -> torch.nn.attention.SDPBackend:
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def self_test(
    device: torch.device, heads: int, head_dim: int, seq_len: int, dtype: torch.dtype
) -> Callable[[str], None]:
    """A probe: one attention forward+backward at the model's geometry, forced onto one kernel."""
    from torch.nn.attention import sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    def probe(backend: str) -> None:
        gen = torch.Generator(device).manual_seed(0)
        q, k, v = (
            torch.randn(1, heads, seq_len, head_dim, device=device, dtype=dtype, generator=gen).requires_grad_()
            for _ in range(3)
        )
        with sdpa_kernel([_sdp_backend(backend)]):
            out = scaled_dot_product_attention(q, k, v)
            out.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # a kernel fault surfaces here, not later inside training
        grads = torch.stack([t.grad.float().abs().sum() for t in (q, k, v) if t.grad is not None])
        if grads.numel() != 3 or not bool(torch.isfinite(grads).all()):
            raise RuntimeError(f"{backend} attention gave non-finite gradients")

    return probe


def apply(choice: AttentionChoice) -> None:
    """Set torch's process-wide SDPA flags to the choice (math always stays on)."""
    if choice.backend == "default":
        return
    enable = {
        "flash": torch.backends.cuda.enable_flash_sdp,
        "efficient": torch.backends.cuda.enable_mem_efficient_sdp,
        "cudnn": torch.backends.cuda.enable_cudnn_sdp,
    }
    for name, setter in enable.items():
        setter(name not in choice.disabled)
    torch.backends.cuda.enable_math_sdp(True)


_CHOSEN: dict[str, AttentionChoice] = {}


def configure_attention(
    device: torch.device, heads: int, head_dim: int, seq_len: int, dtype: torch.dtype = torch.bfloat16
) -> AttentionChoice:
    """Choose and apply once per device per process; later calls (sampling) return the same choice."""
    key = str(device)
    if key in _CHOSEN:
        return _CHOSEN[key]
    if device.type != "cuda":
        choice = AttentionChoice("default")
    else:
        probe = self_test(device, heads, head_dim, seq_len, dtype if dtype != torch.float32 else torch.bfloat16)
        forced = os.environ.get(ENV, "").strip().lower() or None
        choice = choose(torch.__version__, torch.cuda.get_device_capability(device), probe, forced)
        apply(choice)
    _CHOSEN[key] = choice
    return choice


def configure_for_model(
    transformer: torch.nn.Module, device: torch.device, seq_len: int, dtype: torch.dtype
) -> AttentionChoice:
    """The choice for a Flux transformer: its heads and head size, `seq_len` image + text tokens."""
    config = transformer.config  # type: ignore[attr-defined]
    return configure_attention(device, config.num_attention_heads, config.attention_head_dim, seq_len, dtype)
