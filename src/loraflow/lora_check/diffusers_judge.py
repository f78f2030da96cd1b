"""diffusers' own judgement of a kohya-layout Flux file: its converter (`FluxPipeline.lora_state_dict`) must
take every key, or diffusers users could not load what loraflow delivers.

It is consulted only where it can judge: diffusers is installed (the `train` extra), and the file has
FLUX.1's width (3072), the only width diffusers' kohya-Flux converter knows (it splits fused modules at
fixed offsets). Elsewhere the verdict notes it was not consulted, and loraflow's own key rules
(lora_check/keys.py, held to this converter by the tests) decide alone.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

FLUX1_WIDTH = 3072


def diffusers_refusal(path: Path, kohya_flux: bool, width: int | None) -> tuple[str | None, str]:
    """(diffusers' refusal or None, a note on whether it was consulted)."""
    if not kohya_flux:
        return None, ""
    if width != FLUX1_WIDTH:
        return None, "diffusers' kohya-Flux converter not consulted: it knows FLUX.1's width only"
    if importlib.util.find_spec("diffusers") is None:
        return None, "diffusers not installed here: its kohya-Flux converter not consulted"
    from diffusers import FluxPipeline

    try:
        FluxPipeline.lora_state_dict(str(path))
    except Exception as exc:  # ValueError "Incompatible keys", KeyError, AssertionError by version
        return f"diffusers' kohya-Flux converter refuses it: {type(exc).__name__}: {str(exc)[:200]}", ""
    return None, "diffusers' kohya-Flux converter reads every key"
