"""Qwen2.5-VL (or Qwen2-VL) captions through transformers' Qwen2_5_VLForConditionalGeneration.

The inputs are built from the model's own tokenizer (its chat template) and image processor, doing
what Qwen's processor does for images: each `<|image_pad|>` becomes one token per merged patch of
that image's grid. Going through the parts rather than AutoProcessor keeps this working without
torchvision (the processor insists on a video processor, which needs it). `max_pixels` is the VRAM
and speed knob (fewer pixels, fewer vision tokens); greedy decoding, prompt tokens trimmed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loraflow.caption.florence2 import resolve_model
from loraflow.caption.memory import free_memory

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
IMAGE_PAD = "<|image_pad|>"
DEFAULT_PROMPT = (
    "Describe this image in one detailed paragraph for training an image model: the subject, clothing, "
    "pose, setting, lighting, style and composition. No preamble."
)


class QwenVLCaptioner:
    name = "qwen-vl"

    def __init__(
        self,
        model: str | None = None,
        prompt: str | None = None,
        max_new_tokens: int = 300,
        max_pixels: int = 512 * 512,
        min_pixels: int = 56 * 56,
    ) -> None:
        self.model_id = model or DEFAULT_MODEL
        self.prompt = prompt or DEFAULT_PROMPT
        self.max_new_tokens, self.max_pixels, self.min_pixels = max_new_tokens, max_pixels, min_pixels
        self.model: Any = None
        self.tokenizer: Any = None
        self.images: Any = None

    def load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        source, local = resolve_model(self.model_id)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        self.tokenizer.padding_side = "left"  # generation continues each row from its end
        if not self.tokenizer.chat_template:
            self.tokenizer.chat_template = _processor_chat_template(source, local)
        self.images = Qwen2VLImageProcessorPil.from_pretrained(
            source, local_files_only=local, max_pixels=self.max_pixels, min_pixels=self.min_pixels
        )
        config = AutoConfig.from_pretrained(source, local_files_only=local)
        if config.model_type == "qwen2_vl":
            from transformers import Qwen2VLForConditionalGeneration as ModelClass
        else:
            from transformers import Qwen2_5_VLForConditionalGeneration as ModelClass
        self.model = ModelClass.from_pretrained(source, dtype=dtype, local_files_only=local).to(self.device).eval()

    def caption(self, images: list[Any]) -> list[str]:
        import torch

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if IMAGE_PAD not in text:
            raise ValueError("the model's chat template puts no image in the prompt; is this a Qwen-VL model?")
        pixels = self.images(images=[im.convert("RGB") for im in images], return_tensors="pt")
        merge = int(self.images.merge_size) ** 2
        texts = [
            text.replace(IMAGE_PAD, IMAGE_PAD * (int(grid.prod()) // merge), 1) for grid in pixels["image_grid_thw"]
        ]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                pixel_values=pixels["pixel_values"].to(self.device, self.model.dtype),
                image_grid_thw=pixels["image_grid_thw"].to(self.device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        return [" ".join(t.split()) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def unload(self) -> None:
        self.model = self.tokenizer = self.images = None
        free_memory()


def _processor_chat_template(source: str, local: bool) -> str | None:
    """Qwen repos keep the vision-aware template beside the processor (chat_template.json / .jinja)."""
    for name in ("chat_template.jinja", "chat_template.json"):
        if local:
            path = Path(source) / name
            if not path.exists():
                continue
        else:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                path = Path(hf_hub_download(source, name))
            except EntryNotFoundError:
                continue
        text = path.read_text(encoding="utf-8")
        return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None
