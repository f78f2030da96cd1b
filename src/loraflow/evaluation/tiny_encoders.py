"""Tiny random vision encoders (CLIP and DINOv2 architectures), built offline and saved as normal
transformers folders, so the tests and the CPU demo score checkpoints through exactly the loading code
a real DINOv2 or CLIP takes (`AutoModel` / `AutoProcessor.from_pretrained`).

Random weights still map similar pictures to similar embeddings (a random projection keeps colour and
layout), which is all the tiny model's scorecard needs; real jobs use real encoders.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

MARKER = "loraflow_tiny_encoder.txt"
IMAGE_SIZE = 32


def _save(dest: Path, write: Callable[[Path], None]) -> Path:
    """Build into a private folder and rename it into place (jobs started together may build at once)."""
    if (dest / MARKER).exists():
        return dest
    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    write(tmp)
    (tmp / MARKER).write_text("random weights: tests and the CPU demo only\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.replace(dest)
    except OSError:
        if not (dest / MARKER).exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another build won; the same seed made the same weights
    return dest


def build_tiny_clip(dest: str | Path, seed: int = 0) -> Path:
    """A CLIP text+vision model of a few thousand parameters with its tokenizer and image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from loraflow.trainer.tiny import tiny_clip_text, tiny_clip_tokenizer

    def write(folder: Path) -> None:
        torch.manual_seed(seed)
        tokenizer = tiny_clip_tokenizer()
        text = tiny_clip_text(tokenizer)
        vision = dict(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            image_size=IMAGE_SIZE, patch_size=8,
        )
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
        processor = CLIPProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                               crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
            tokenizer=tokenizer,
        )
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return _save(Path(dest), write)


def build_tiny_dinov2(dest: str | Path, seed: int = 0) -> Path:
    """A DINOv2 vision transformer of a few thousand parameters with its image processor."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    def write(folder: Path) -> None:
        torch.manual_seed(seed)
        model = Dinov2Model(
            Dinov2Config(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                image_size=IMAGE_SIZE, patch_size=8,
            )
        ).eval()
        processor = BitImageProcessor(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return _save(Path(dest), write)


BUILDERS: dict[str, Callable[[str | Path], Path]] = {
    "tiny-clip": build_tiny_clip,
    "tiny-dinov2": build_tiny_dinov2,
}
