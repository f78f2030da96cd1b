"""Training data: aspect buckets, a deterministic batch order, and caches keyed by content.

Latents are cached per (image sha256, bucket size) and text embeddings per caption, so every image
stays paired with its own caption whatever the order (diffusers' example indexes its cache by step
under a shuffled loader, which mismatches them). The batch order of epoch e depends only on
(seed, e), so the batch at any step is known without replaying the run: that is what makes resume exact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from loraflow.trainer.flow import bucket_size


@dataclass(frozen=True)
class Sample:
    name: str
    sha256: str
    caption: str
    size: tuple[int, int]  # bucket (w, h)


def load_samples(dataset_dir: Path, resolutions: list[int], repeats: int) -> list[Sample]:
    manifest = json.loads((dataset_dir / "manifest.json").read_text(encoding="utf-8"))
    samples: list[Sample] = []
    for entry in manifest["files"]:
        for res in resolutions:
            size = bucket_size(entry["width"], entry["height"], res)
            samples += [Sample(entry["name"], entry["sha256"], entry["caption"], size)] * repeats
    if not samples:
        raise ValueError(f"no images in {dataset_dir}/manifest.json")
    return samples


def epoch_batches(samples: list[Sample], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of sample indices for one epoch; each batch holds one bucket size."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(samples):
        by_bucket.setdefault(s.size, []).append(i)
    batches: list[list[int]] = []
    for size in sorted(by_bucket):
        idx = by_bucket[size]
        order = [idx[j] for j in torch.randperm(len(idx), generator=gen).tolist()]
        batches += [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    return [batches[j] for j in torch.randperm(len(batches), generator=gen).tolist()]


def load_pixels(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Resize to cover the bucket, centre-crop, and scale to [-1, 1] as [3, H, W]."""
    img = Image.open(path).convert("RGB")
    w, h = size
    scale = max(w / img.width, h / img.height)
    rw, rh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
    img = img.resize((rw, rh), Image.BICUBIC)
    left, top = (rw - w) // 2, (rh - h) // 2
    img = img.crop((left, top, left + w, top + h))
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class Cache:
    """safetensors files under `root`, named by a hash of everything that determines their content."""

    def __init__(self, root: Path, model_key: str) -> None:
        self.root = root
        self.model_key = model_key
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, kind: str, *parts: object) -> Path:
        digest = hashlib.sha256("|".join(map(str, (self.model_key, *parts))).encode()).hexdigest()[:32]
        return self.root / kind / f"{digest}.safetensors"

    def get(self, kind: str, *parts: object) -> dict[str, torch.Tensor] | None:
        path = self._path(kind, *parts)
        if not path.exists():
            return None
        try:
            return load_file(path)
        except Exception:  # a cache file cut short by a kill: recompute it
            path.unlink(missing_ok=True)
            return None

    def put(self, kind: str, tensors: dict[str, torch.Tensor], *parts: object) -> None:
        path = self._path(kind, *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        tmp.replace(path)


class Resident:
    """The run's cached latents and text embeddings, read from the disk cache once and kept in memory.

    A step then reads no file and, on a GPU, copies nothing from the host: the tensors sit on the
    training device (up to `device_limit` bytes; beyond that in pinned host memory, copied without a
    wait). Text embeddings are stored in the training dtype, which every step cast them to anyway.
    """

    def __init__(
        self,
        cache: Cache,
        samples: list[Sample],
        max_sequence_length: int,
        device: torch.device,
        text_dtype: torch.dtype,
        device_limit: int = 2 << 30,
    ) -> None:
        self.device = device
        latents: dict[tuple[str, tuple[int, int]], torch.Tensor] = {}
        for s in samples:
            if (s.sha256, s.size) not in latents:
                found = cache.get("latents", s.sha256, s.size)
                assert found is not None, "latents are cached before training"
                latents[(s.sha256, s.size)] = found["params"]
        texts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for caption in sorted({s.caption for s in samples} | {""}):
            found = cache.get("text", caption, max_sequence_length)
            assert found is not None, "text embeddings are cached before training"
            texts[caption] = (found["t5"].to(text_dtype), found["pooled"].to(text_dtype))
        size = sum(t.nbytes for t in latents.values()) + sum(a.nbytes + b.nbytes for a, b in texts.values())
        home = device if size <= device_limit or device.type != "cuda" else torch.device("cpu")
        pin = device.type == "cuda" and home.type == "cpu"

        def place(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory() if pin else t.to(home)

        self._latents = {k: place(v) for k, v in latents.items()}
        self._texts = {k: (place(a), place(b)) for k, (a, b) in texts.items()}

    def latents(self, sample: Sample) -> torch.Tensor:
        """(mean, logvar) of the sample's latent distribution, [2C, H, W] on the training device."""
        return self._latents[(sample.sha256, sample.size)].to(self.device, non_blocking=True)

    def text(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 sequence embeddings, pooled CLIP) of a caption on the training device."""
        t5, pooled = self._texts[caption]
        return t5.to(self.device, non_blocking=True), pooled.to(self.device, non_blocking=True)
