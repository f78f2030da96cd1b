"""Florence-2 captions through transformers' native Florence2 classes (no remote code): the
`<DETAILED_CAPTION>` / `<MORE_DETAILED_CAPTION>` tasks with 3 beams, as FluxGym runs them.

Checkpoints must be in transformers' format (for example florence-community/Florence-2-large); a local
folder works the same way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from loraflow.caption.memory import free_memory

DEFAULT_MODEL = "florence-community/Florence-2-large"
TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")


def resolve_model(model: str | None) -> tuple[str, bool]:
    source = model or DEFAULT_MODEL
    return (str(Path(source).expanduser()), True) if Path(source).expanduser().is_dir() else (source, False)


class Florence2Captioner:
    name = "florence2"

    def __init__(
        self, model: str | None = None, task: str = "<DETAILED_CAPTION>", max_new_tokens: int = 1024, num_beams: int = 3
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}")
        self.model_id, self.task = model, task
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        self.model: Any = None
        self.processor: Any = None

    def load(self) -> None:
        import torch
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        source, local = resolve_model(self.model_id)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(source, local_files_only=local)
        self.model = (
            Florence2ForConditionalGeneration.from_pretrained(source, torch_dtype=dtype, local_files_only=local)
            .to(self.device)
            .eval()
        )

    def caption(self, images: list[Any]) -> list[str]:
        import torch

        rgb = [im.convert("RGB") for im in images]
        inputs = self.processor(text=[self.task] * len(rgb), images=rgb, return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        # never past the decoder's positions (Florence-2-large: 1024)
        limit = int(getattr(self.model.config.text_config, "max_position_embeddings", 1024)) - 2
        max_new = min(self.max_new_tokens, limit)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new, num_beams=self.num_beams, do_sample=False)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [clean(t) for t in texts]

    def unload(self) -> None:
        self.model = self.processor = None
        free_memory()


def clean(text: str) -> str:
    """FluxGym strips Florence's habitual opening; collapse whitespace."""
    text = re.sub(r"^\s*(The image shows|The image is|In this image,?)\s+", "", text.strip(), flags=re.IGNORECASE)
    return " ".join(text.split())
