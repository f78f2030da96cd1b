"""Which captioners can run on this machine, and why not the others.

A captioner is offered (web UI, `loraflow caption run`) only when it would work here: its Python
packages are installed, its default model is on disk or the hub may be reached, and the large ones have
a GPU. Asking costs no download and no model load, so a page can call it on every render.
"""

from __future__ import annotations

import importlib.util
import os

from loraflow.caption.run import MODEL_BACKENDS

# Package the backend imports, default model and a file that shows the model is in the Hugging Face cache.
NEEDS: dict[str, tuple[str, str, str]] = {
    "wd14": ("onnxruntime", "SmilingWolf/wd-vit-tagger-v3", "model.onnx"),
    "florence2": ("transformers", "florence-community/Florence-2-large", "config.json"),
    "joycaption": ("transformers", "fancyfeast/llama-joycaption-beta-one-hf-llava", "config.json"),
    "qwen-vl": ("transformers", "Qwen/Qwen2.5-VL-3B-Instruct", "config.json"),
}
GPU_ONLY = {"joycaption", "qwen-vl"}  # 3-8 B parameter models: hours on a CPU


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename), str)


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def operator_model(backend: str) -> str | None:
    """The model folder the operator registered for a backend: LORAFLOW_CAPTIONER_MODELS="wd14=/m/wd,florence2=/m/f"."""
    for item in os.environ.get("LORAFLOW_CAPTIONER_MODELS", "").split(","):
        name, _, path = item.partition("=")
        if name.strip() == backend and path.strip():
            return os.path.expanduser(path.strip())
    return None


def why_not(backend: str) -> str | None:
    """None when `backend` can caption here (the operator's model, else its default); else the reason."""
    if backend in ("existing", "template"):
        return None
    if backend not in MODEL_BACKENDS or backend not in NEEDS:
        return f"'{backend}' is not a captioner of this version"
    package, repo, marker = NEEDS[backend]
    if importlib.util.find_spec(package) is None:
        return f"needs the {package} package: pip install 'loraflow[caption]'"
    if backend in GPU_ONLY and not _has_gpu():
        return "needs a GPU (too slow on a CPU)"
    model = operator_model(backend)
    if model is not None:
        return None if os.path.isdir(model) else f"LORAFLOW_CAPTIONER_MODELS names {model}, which is not a folder"
    if not _cached(repo, marker) and _offline():
        return f"its model {repo} is not downloaded and HF_HUB_OFFLINE is set"
    return None


def captioner_status(backends: list[str] | None = None) -> dict[str, str | None]:
    """Every captioner that makes new captions, with why_not for each."""
    names = backends or ["template", *sorted(MODEL_BACKENDS)]
    return {name: why_not(name) for name in names}
