"""Jobs started together build the shared tiny model at the same time: both get it, none fails."""

from __future__ import annotations

import threading
from pathlib import Path

from loraflow.trainer.tiny import MARKER, build_tiny_flux


def test_concurrent_builds_of_the_shared_model_both_succeed(tmp_path: Path) -> None:
    from diffusers import (  # noqa: F401
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    dest = tmp_path / "tiny-flux"
    results: list[object] = []
    barrier = threading.Barrier(2)

    def build() -> None:
        barrier.wait()
        try:
            results.append(build_tiny_flux(dest))
        except Exception as exc:  # the failure this test is about
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [dest, dest], results
    assert (dest / MARKER).exists() and (dest / "transformer").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-flux"]  # no half-built folder left behind
