"""Running a captioner over images: in its own process, cached by image hash, fill-missing by default."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraflow import paths
from loraflow.errors import LoraflowError
from loraflow.spec import CaptionPolicy

MODEL_BACKENDS = {"wd14", "florence2", "joycaption", "qwen-vl"}  # run by caption.worker
AVAILABLE = {"existing", "template"} | MODEL_BACKENDS


def captioner_options(policy: CaptionPolicy, trigger: str | None = None) -> dict[str, Any]:
    if policy.backend == "wd14":
        return {
            "model": policy.model,
            "general_threshold": policy.general_threshold,
            "character_threshold": policy.character_threshold,
            "max_tags": policy.max_tags,
            "keep_rating": policy.keep_rating,
        }
    if policy.backend == "florence2":
        return {"model": policy.model, "task": policy.task or "<DETAILED_CAPTION>"}
    if policy.backend == "joycaption":
        return {
            "model": policy.model,
            "caption_type": policy.caption_type,
            "caption_length": policy.caption_length,
            "name": trigger if policy.refer_by_trigger else None,
            "extra": policy.prompt or "",
            "max_new_tokens": policy.max_new_tokens,
        }
    if policy.backend == "qwen-vl":
        return {
            "model": policy.model,
            "prompt": policy.prompt,
            "max_new_tokens": policy.max_new_tokens,
            "max_pixels": policy.max_pixels,
        }
    return {"model": policy.model}


class CaptionCache:
    """Captions by image content, backend and its settings, so a re-run, or a remote caption stage
    retried on a new host, is instant."""

    def __init__(self, policy: CaptionPolicy, trigger: str | None = None, root: Path | None = None) -> None:
        self.backend = policy.backend
        self.options = captioner_options(policy, trigger)
        self.root = root or paths.home() / "cache" / "captions"

    def _file(self, image: Path) -> Path:
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        key = json.dumps([self.backend, self.options, digest], sort_keys=True)
        return self.root / self.backend / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.txt"

    def get(self, image: Path) -> str | None:
        path = self._file(image)
        return path.read_text(encoding="utf-8") if path.exists() else None

    def put(self, image: Path, text: str) -> None:
        path = self._file(image)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def worker_job(backend: str, options: dict[str, Any], images: list[str], output: str) -> dict[str, Any]:
    """What `python -m loraflow.caption.worker JOB.json` reads, here or on a rented host."""
    return {"backend": backend, "options": options, "output": output, "images": images}


Progress = Callable[[int, int], None]


def _run_worker(argv: list[str], timeout_s: float, on_progress: Progress | None) -> tuple[int, str]:
    """Run the worker, passing its `caption` events (done, total) on as they come; (exit code, stderr)."""
    from loraflow.trainer.events import PREFIX

    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            for line in proc.stdout or []:
                if on_progress and line.startswith(PREFIX):
                    event = json.loads(line[len(PREFIX) :])
                    if event.get("event") == "caption":
                        on_progress(int(event["done"]), int(event["total"]))
            code = proc.wait()
            timed_out = timer.finished.is_set()
        finally:
            timer.cancel()
        errors.seek(0)
        return code, f"stopped after {timeout_s:.0f} s without finishing" if timed_out else errors.read()


def run_captioner(
    images: list[Path],
    policy: CaptionPolicy,
    cache_root: Path | None = None,
    timeout_s: float = 3600,
    trigger: str | None = None,
    on_progress: Progress | None = None,
) -> dict[Path, str]:
    """Captions for `images` (cached ones instantly); the model runs in a separate process."""
    cache = CaptionCache(policy, trigger, cache_root)
    out: dict[Path, str] = {}
    todo: list[Path] = []
    for image in images:
        if (text := cache.get(image)) is not None:
            out[image] = text
        else:
            todo.append(image)
    if not todo:
        return out
    with tempfile.TemporaryDirectory(prefix="loraflow-caption-") as tmp:
        job = Path(tmp) / "job.json"
        result = Path(tmp) / "result.json"
        job.write_text(json.dumps(worker_job(policy.backend, cache.options, [str(p) for p in todo], str(result))))
        code, stderr = _run_worker([sys.executable, "-m", "loraflow.caption.worker", str(job)], timeout_s, on_progress)
        if code != 0 or not result.exists():
            last = (stderr.strip().splitlines() or ["no output"])[-1]
            raise LoraflowError(
                f"the {policy.backend} captioner failed (exit {code}): {last}",
                fix="check dataset.captions.model, or caption the images yourself; no caption file was written",
            )
        produced = json.loads(result.read_text(encoding="utf-8"))
    for image in todo:
        out[image] = produced[str(image)]
        cache.put(image, out[image])
    return out


def caption_folder(
    folder: Path, policy: CaptionPolicy, caption_ext: str = "txt", on_progress: Progress | None = None
) -> dict[str, int]:
    """Write caption files next to the images of a folder: only missing ones unless policy.mode is overwrite,
    in which case the previous files are kept in .loraflow-captions-backup/."""
    from loraflow.media.images import decode

    def is_image(path: Path) -> bool:
        if not path.is_file() or path.name.startswith(".") or ".loraflow-captions-backup" in path.parts:
            return False
        if path.suffix.lower() == f".{caption_ext}":
            return False
        from loraflow.media.images import DecodedImage

        return isinstance(decode(path.read_bytes(), path.name, 10**9), DecodedImage)

    images = [p for p in sorted(folder.rglob("*")) if is_image(p)]
    need = []
    for image in images:
        cap = image.with_suffix(f".{caption_ext}")
        if policy.mode == "overwrite" or not cap.exists() or not cap.read_text(errors="replace").strip():
            need.append(image)
    if policy.backend == "template":
        texts = {image: policy.template for image in need}
    else:
        texts = run_captioner(need, policy, on_progress=on_progress) if need else {}
    backup = folder / ".loraflow-captions-backup"
    for image, text in texts.items():
        cap = image.with_suffix(f".{caption_ext}")
        if cap.exists():
            backup.mkdir(exist_ok=True)
            shutil.copy2(cap, backup / cap.relative_to(folder).as_posix().replace("/", "__"))
        cap.write_text(text.strip() + "\n", encoding="utf-8")
    return {"images": len(images), "captioned": len(texts), "kept": len(images) - len(texts)}
