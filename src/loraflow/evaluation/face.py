"""Face identity for the scorecard: an ArcFace model the operator provides (`LORAFLOW_ARCFACE_MODEL`, an
.onnx file; loraflow ships none and downloads none), run with onnxruntime on the CPU.

ArcFace expects an aligned face; loraflow has no face detector, so each picture's centre square is used
(portraits, the datasets this is for, have the face there). The number is a cosine between unit
embeddings: the samples' mean similarity to the reference images' faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from loraflow.errors import UserInputError


class FaceEmbedder:
    def __init__(self, model: str) -> None:
        import onnxruntime as ort

        if not Path(model).is_file():
            raise UserInputError(f"LORAFLOW_ARCFACE_MODEL {model} is not a file", fix="point it at an ArcFace .onnx")
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input = first.name
        h, w = first.shape[2], first.shape[3]
        self.size = (w if isinstance(w, int) else 112, h if isinstance(h, int) else 112)

    def _pixels(self, image: Image.Image) -> np.ndarray:
        img = image.convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize(self.size, Image.BICUBIC)
        arr = (np.asarray(img, dtype=np.float32) - 127.5) / 127.5
        return arr.transpose(2, 0, 1)

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        if not images:
            return torch.zeros(0, 1)
        batch = np.stack([self._pixels(i) for i in images])
        out = np.concatenate([self.session.run(None, {self.input: batch[i : i + 1]})[0] for i in range(len(batch))])
        return torch.nn.functional.normalize(torch.from_numpy(out.reshape(len(images), -1)).float(), dim=-1)
