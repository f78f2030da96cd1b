"""`python -m loraflow.caption.worker JOB.json`: one captioner in its own process.

A crash, a leak of GPU memory or a hung model stays in this process; the parent gets a result file
(written atomically at the end) or a clear error, and the dataset is never half-written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from loraflow.trainer.events import emit


def make_captioner(backend: str, options: dict):
    if backend == "wd14":
        from loraflow.caption.wd14 import WD14Tagger

        return WD14Tagger(**options)
    if backend == "florence2":
        from loraflow.caption.florence2 import Florence2Captioner

        return Florence2Captioner(**options)
    if backend == "joycaption":
        from loraflow.caption.joycaption import JoyCaptioner

        return JoyCaptioner(**options)
    if backend == "qwen-vl":
        from loraflow.caption.qwen_vl import QwenVLCaptioner

        return QwenVLCaptioner(**options)
    raise ValueError(f"the '{backend}' captioner is not available in this version")


def auto_batch_size() -> int:
    """From free GPU memory (about 2 GB an image for the large captioners); 4 on the CPU."""
    try:
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return max(1, min(16, int(free / 2e9)))
    except ImportError:
        pass
    return 4


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text())
    from PIL import Image

    captioner = make_captioner(job["backend"], job.get("options", {}))
    captioner.load()
    results: dict[str, str] = {}
    paths = job["images"]
    batch = int(job.get("batch_size") or auto_batch_size())
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        images = [Image.open(p) for p in chunk]
        for path, text in zip(chunk, captioner.caption(images), strict=True):
            results[path] = text
        emit("caption", done=min(start + batch, len(paths)), total=len(paths))
    captioner.unload()
    out = Path(job["output"])
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps(results, ensure_ascii=False))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
