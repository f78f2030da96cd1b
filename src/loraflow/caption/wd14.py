"""WD14 taggers (SmilingWolf wd-*-tagger-v3 and v2) through onnxruntime: `model.onnx` plus
`selected_tags.csv` (tag_id,name,category,count; category 9 rating, 0 general, 4 character).

Preprocessing as kohya's and TagGUI's taggers do: alpha onto white, pad to a white square, resize to the
model's input size, RGB -> BGR, float32 in 0-255, no normalisation.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_MODEL = "SmilingWolf/wd-vit-tagger-v3"
KAOMOJI = {
    "0_0",
    "(o)_(o)",
    "+_+",
    "+_-",
    "._.",
    "<o>_<o>",
    "<|>_<|>",
    "=_=",
    ">_<",
    "3_3",
    "6_9",
    ">_o",
    "@_@",
    "^_^",
    "o_o",
    "u_u",
    "x_x",
    "|_|",
    "||_||",
}


@dataclass(frozen=True)
class Tag:
    name: str
    category: int


def resolve_model(model: str | None) -> Path:
    """A local folder, or a hub id fetched once into the Hugging Face cache."""
    source = model or DEFAULT_MODEL
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser()
    from huggingface_hub import hf_hub_download

    onnx = hf_hub_download(source, "model.onnx")
    hf_hub_download(source, "selected_tags.csv")
    return Path(onnx).parent


class WD14Tagger:
    name = "wd14"

    def __init__(
        self,
        model: str | None = None,
        general_threshold: float = 0.35,
        character_threshold: float = 0.85,
        max_tags: int | None = None,
        keep_rating: bool = False,
        replace_underscores: bool = True,
    ) -> None:
        self.model = model
        self.general_threshold = general_threshold
        self.character_threshold = character_threshold
        self.max_tags = max_tags
        self.keep_rating = keep_rating
        self.replace_underscores = replace_underscores
        self.session = None
        self.tags: list[Tag] = []

    def load(self) -> None:
        import onnxruntime as ort

        folder = resolve_model(self.model)
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=providers)
        with (folder / "selected_tags.csv").open(encoding="utf-8") as f:
            self.tags = [Tag(row["name"], int(row["category"])) for row in csv.DictReader(f)]
        self.size = int(self.session.get_inputs()[0].shape[1])

    def preprocess(self, image: Image.Image) -> np.ndarray:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
        side = max(rgb.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        square = square.resize((self.size, self.size), Image.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1].copy()  # RGB -> BGR, 0-255

    def caption(self, images: list[Image.Image]) -> list[str]:
        assert self.session is not None, "load() first"
        batch = np.stack([self.preprocess(im) for im in images])
        name = self.session.get_inputs()[0].name
        probs = self.session.run(None, {name: batch})[0]
        if probs.min() < 0 or probs.max() > 1:  # logits: make them probabilities
            probs = 1 / (1 + np.exp(-probs))
        return [self._tags(row) for row in probs]

    def _tags(self, row: np.ndarray) -> str:
        rating, characters, general = [], [], []
        for tag, p in zip(self.tags, row, strict=False):
            if tag.category == 9:
                rating.append((p, tag.name))
            elif tag.category == 4 and p >= self.character_threshold:
                characters.append((p, tag.name))
            elif tag.category == 0 and p >= self.general_threshold:
                general.append((p, tag.name))
        ordered = [n for _, n in sorted(characters, reverse=True)] + [n for _, n in sorted(general, reverse=True)]
        if self.max_tags:
            ordered = ordered[: self.max_tags]
        if self.keep_rating and rating:
            ordered.insert(0, max(rating)[1])
        if self.replace_underscores:
            ordered = [t if t in KAOMOJI else t.replace("_", " ") for t in ordered]
        return ", ".join(dict.fromkeys(ordered))

    def unload(self) -> None:
        self.session = None
