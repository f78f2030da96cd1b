"""The service pays the submit door's first-use costs when it starts, never inside a user's request.

The door (running/submit.py) imports its engines, dataset checks and name rules lazily so that a CLI
command starts fast. In `loraflow serve` that made a user's first submission import them: about 1000
modules (torch through musubi's module, scipy through imagehash, numpy, PIL's plugins) in a worker
thread that held the GIL, 4.3 s on an idle 2-core machine and 17 s on a busy one, while every other
request of every user waited (issue 29: the second user's submit p95 was 4.6 s under abuse, where each
later submission took about 0.1 s). `warm_up` runs the same code once, on a one-image dataset made
here, before the server answers anything.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from pathlib import Path

_DONE = threading.Event()
_LOCK = threading.Lock()


def warm_up() -> None:
    """Import what a submission, a quote and an upload check use, and check one tiny image the way a
    submitted dataset is checked (PIL's decoders, the perceptual hash's scipy); once per process."""
    if _DONE.is_set():
        return
    with _LOCK:
        if _DONE.is_set():
            return
        from PIL import Image

        from loraflow.engines import get_engine, preflight  # noqa: F401  (the door's own lazy imports, named here)
        from loraflow.engines.installed import require_engine  # noqa: F401
        from loraflow.platform.credits import quote  # noqa: F401
        from loraflow.platform.names import names_taken  # noqa: F401
        from loraflow.providers.registry import is_rented, provider_for  # noqa: F401  (a quote's)
        from loraflow.running.control import start_runner  # noqa: F401
        from loraflow.running.submit import DatasetUnfit, check_dataset
        from loraflow.spec import parse_spec

        for engine in ("builtin", "ai-toolkit", "kohya", "musubi", "fal"):
            get_engine(engine)  # each engine's module (none imports torch: tests/server/test_warm_service.py)
        with tempfile.TemporaryDirectory(prefix="loraflow-warm-") as folder:
            for i, fmt in enumerate(("PNG", "JPEG", "WEBP", "PNG")):
                image = Image.effect_noise((64, 64), 40 + 20 * i).convert("RGB")
                image.save(Path(folder, f"warm{i}.{fmt.lower()}"), format=fmt)
                Path(folder, f"warm{i}.txt").write_text("a warm-up image", encoding="utf-8")
            spec = parse_spec({"name": "warm", "base_model": "tiny-flux", "dataset": {"path": folder}}, "warm")
            with contextlib.suppress(DatasetUnfit):  # the check ran, which is all this is for
                check_dataset(spec, None)
        _DONE.set()
