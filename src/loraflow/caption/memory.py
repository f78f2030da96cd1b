"""Giving a captioner's memory back before training starts (the captioner also runs in its own process,
so whatever this misses goes when that process ends)."""

from __future__ import annotations

import gc


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
