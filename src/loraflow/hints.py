"""Known failure signatures in any engine's output, each with what the user should do."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Hint:
    code: str
    pattern: re.Pattern[str]
    hint: str


# A fault inside a GPU kernel or the driver (not out of memory): the process's CUDA context is gone.
CUDA_FAULT = re.compile(
    r"CUDA error|illegal memory access|cudaErrorIllegalAddress|unspecified launch failure|"
    r"CUDNN_STATUS_|cuDNN error|CUBLAS_STATUS_(?!ALLOC)|device-side assert",
    re.I,
)

HINTS = [
    Hint(
        "oom",
        re.compile(r"CUDA out of memory|CUDA error: out of memory|OutOfMemoryError|OOM during training", re.I),
        "the GPU ran out of memory: set training.vram_preset to a smaller card (24 -> 16 -> 12), use "
        "batch_size 1, gradient_checkpointing true, or a lower resolution",
    ),
    Hint(
        "cuda_fault",
        CUDA_FAULT,
        "the GPU faulted inside a kernel (illegal memory access / cuDNN or cuBLAS error): a GPU kernel or "
        "driver bug, not a problem with your data. The trainer is restarted from its last checkpoint up to "
        "monitor.max_restarts times; if it keeps faulting, use another GPU type or image (torch/CUDA "
        "version), or force the portable attention kernel with LORAFLOW_ATTENTION=math (slower) in the "
        "trainer's environment",
    ),
    Hint(
        "hf_gated",
        re.compile(r"GatedRepoError|Cannot access gated repo|Access to model .* is restricted", re.I),
        "the base model is gated: accept its license on huggingface.co with your account, then set HF_TOKEN",
    ),
    Hint(
        "hf_auth",
        re.compile(r"401 Client Error|Invalid user token|invalid credentials in the Authorization", re.I),
        "Hugging Face refused the token: set a valid HF_TOKEN (read access) in the environment",
    ),
    Hint(
        "bad_model",
        # diffusers / transformers on a model folder with a part missing (a copy that stopped half-way, a
        # single-file checkpoint where a diffusers folder is expected): every restart fails the same way.
        re.compile(
            r"no file named (?:config\.json|model_index\.json|diffusion_pytorch_model)|"
            r"does not appear to have (?:a file named|files named)|Can't load (?:the )?(?:config|tokenizer)",
            re.I,
        ),
        "the base model folder is incomplete or not in diffusers' layout: every part (transformer, vae, "
        "text encoders, tokenizers, scheduler) needs its folder with its config file. Re-save it with "
        "save_pretrained, download it again, or use a catalog id such as flux-dev",
    ),
    Hint(
        "missing_file",
        re.compile(r"FileNotFoundError|No such file or directory", re.I),
        "a file the engine needs is missing: check the dataset and model paths in the rendered config",
    ),
    Hint(
        "nan_loss",
        # ai-toolkit prints exactly `loss is nan` (for inf too; often right after a `\r` bar fragment with no
        # newline between) and trains on with the loss zeroed; kohya's bar shows `avr_loss=nan`; the builtin
        # trainer stops with this code. Not "Prior loss is nan" (regularisation images only).
        re.compile(r"(?<!Prior )\bloss is nan$|avr_loss=-?(?:nan|inf)\b|^loss is not finite"),
        "the loss became NaN or infinite: lower training.learning_rate (halve it), use precision bf16 or fp32 "
        "rather than fp16 (the VAE in fp32), and check the dataset for broken, blank or all-black images",
    ),
    Hint(
        "disk_full",
        re.compile(r"No space left on device", re.I),
        "the disk is full: raise compute.gpu.disk_gb or lower checkpointing.keep_last",
    ),
]


def match_hint(line: str) -> Hint | None:
    for hint in HINTS:
        if hint.pattern.search(line):
            return hint
    return None


def hint_for(code: str) -> str:
    """The advice for a failure code, for a trainer that detects the failure itself."""
    return next(h.hint for h in HINTS if h.code == code)
