"""Captioner throughput: images per second of a backend on the bundled sample dataset, model load timed
apart, on whatever device is there (CUDA when present).

    .venv/bin/python bench/caption_speed.py florence2 florence-community/Florence-2-large
    .venv/bin/python bench/caption_speed.py qwen-vl Qwen/Qwen2.5-VL-3B-Instruct
    .venv/bin/python bench/caption_speed.py --tiny        # every backend on tiny random models (CPU check)

With real weights this is the GPU measurement the captioning issue asks for; `--tiny` only shows the
harness works and what the pipeline itself costs around a (negligible) model.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(backend: str, model: str, repeats: int = 3) -> dict[str, object]:
    import torch
    from PIL import Image

    from loraflow.caption.worker import auto_batch_size, make_captioner

    images = sorted(p for p in (REPO / "examples" / "sample_dataset").iterdir() if p.suffix.lower() in {".jpg", ".png"})
    options: dict[str, object] = {"model": model}
    if backend in ("joycaption", "qwen-vl"):
        options["max_new_tokens"] = 64
    captioner = make_captioner(backend, options)
    start = time.perf_counter()
    captioner.load()
    load_s = time.perf_counter() - start
    batch = auto_batch_size()
    pictures = [Image.open(p) for p in images]
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(pictures), batch):
            captioner.caption(pictures[i : i + batch])
    elapsed = time.perf_counter() - start
    captioner.unload()
    return {
        "backend": backend,
        "model": model,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "batch_size": batch,
        "images": len(pictures) * repeats,
        "load_s": round(load_s, 2),
        "images_per_s": round(len(pictures) * repeats / elapsed, 2),
    }


def main() -> None:
    sys.path.insert(0, str(REPO / "src"))
    if sys.argv[1:] == ["--tiny"]:
        from loraflow.testing import tiny_captioners
        from loraflow.testing.tiny_wd14 import build_tiny_wd14

        root = Path(tempfile.mkdtemp(prefix="lf-caption-bench-"))
        models = {
            "wd14": build_tiny_wd14(root / "wd14"),
            "florence2": tiny_captioners.build_tiny_florence2(root / "florence2"),
            "joycaption": tiny_captioners.build_tiny_joycaption(root / "joycaption"),
            "qwen-vl": tiny_captioners.build_tiny_qwen_vl(root / "qwen"),
        }
        rows = [measure(backend, str(path)) | {"model": f"tiny random {backend}"} for backend, path in models.items()]
        out = REPO / "bench" / "results" / "caption_speed_tiny.json"
    else:
        backend, model = sys.argv[1], sys.argv[2]
        rows = [measure(backend, model)]
        out = REPO / "bench" / "results" / f"caption_speed_{backend}.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
