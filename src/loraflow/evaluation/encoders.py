"""The scorecard's encoders, loaded like every other model: a Hub id (downloaded once into the Hugging Face
cache, HF_TOKEN honoured), a local folder saved with save_pretrained, or `builtin:tiny-clip` /
`builtin:tiny-dinov2` (random, built here: tests and the CPU demo).

`ImageEncoder` embeds pictures (DINOv2's CLS token, or CLIP/SigLIP's image projection); `TextImageScorer`
gives the cosine between a prompt and a picture (CLIP score / 100, SigLIP's too). Both return unit vectors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from loraflow import paths
from loraflow.errors import UserInputError
from loraflow.evaluation.tiny_encoders import BUILDERS


def resolve_encoder(ref: str, models_root: Path | None = None) -> tuple[str, dict[str, Any]]:
    """The folder or Hub id to load, and the from_pretrained keywords for it."""
    if ref.startswith("builtin:"):
        name = ref.split(":", 1)[1]
        if name not in BUILDERS:
            raise UserInputError(
                f"evaluation encoder {ref!r} is not built in", fix=f"use one of builtin:{', builtin:'.join(BUILDERS)}"
            )
        return str(BUILDERS[name]((models_root or paths.models_root()) / name)), {"local_files_only": True}
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path), {"local_files_only": True}
    if ref.startswith((".", "/", "~")):
        raise UserInputError(
            f"evaluation encoder folder {ref} does not exist",
            fix="point evaluation.image_encoder / clip_model at a folder saved with save_pretrained, or a Hub id",
        )
    return ref, {"token": os.environ.get("HF_TOKEN")}


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu()


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features where 4.x returned the tensor."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    return pooled if pooled is not None else output[0]


class ImageEncoder:
    """Unit embeddings of images: what sample-to-dataset similarity and memorization compare."""

    def __init__(self, ref: str, device: torch.device, models_root: Path | None = None) -> None:
        from transformers import AutoImageProcessor, AutoModel

        where, kw = resolve_encoder(ref, models_root)
        self.ref = ref
        self.processor = AutoImageProcessor.from_pretrained(where, **kw)
        self.model = AutoModel.from_pretrained(where, **kw).to(device).eval()
        self.device = device

    @torch.no_grad()
    def embed(self, images: list[Image.Image], batch: int = 16) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch):
            pixels = self.processor(images=images[i : i + batch], return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self.device, self.model.dtype)
            if hasattr(self.model, "get_image_features"):  # CLIP, SigLIP: the shared image-text space
                feats = _features(self.model.get_image_features(pixel_values=pixels))
            else:  # DINOv2 and other vision transformers: the pooled CLS token
                feats = self.model(pixel_values=pixels).pooler_output
            out.append(_unit(feats))
        return torch.cat(out) if out else torch.zeros(0, 1)


class TextImageScorer:
    """Cosine between a prompt and an image in a CLIP/SigLIP space: prompt adherence."""

    def __init__(self, ref: str, device: torch.device, models_root: Path | None = None) -> None:
        from transformers import AutoModel, AutoProcessor

        where, kw = resolve_encoder(ref, models_root)
        self.ref = ref
        self.processor = AutoProcessor.from_pretrained(where, **kw)
        self.model = AutoModel.from_pretrained(where, **kw).to(device).eval()
        self.device = device
        if not hasattr(self.model, "get_text_features"):
            raise UserInputError(
                f"evaluation.clip_model {ref} has no text tower", fix="use a CLIP or SigLIP model for prompt adherence"
            )

    @torch.no_grad()
    def scores(self, prompts: list[str], images: list[Image.Image]) -> list[float]:
        """One cosine per (prompt, image) pair."""
        tokens = self.processor(
            text=prompts, padding="max_length", truncation=True, max_length=64, return_tensors="pt"
        ).to(self.device)
        text = _unit(_features(self.model.get_text_features(**tokens)))
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
        image = _unit(_features(self.model.get_image_features(pixel_values=pixels)))
        return [round(float(v), 4) for v in (text * image).sum(-1)]
