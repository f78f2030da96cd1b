"""The video keys of a musubi spec's `engine.options`, checked where the spec is read and where musubi
renders, so both say the same (a leaf: the spec's engine-semantics check runs below the engines)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loraflow.errors import UserInputError

if TYPE_CHECKING:
    from loraflow.spec import TrainSpec

FRAME_EXTRACTIONS = ("head", "chunk", "slide", "uniform", "full")
VIDEO_OPTIONS = ("target_frames", "frame_extraction", "frame_stride", "frame_sample", "max_frames", "source_fps")


def video_settings(spec: TrainSpec) -> dict[str, Any]:
    """The video keys of `engine.options` (catalog defaults under the user's), checked as musubi needs them.

    Wan's VAE compresses time by 4, so musubi rounds each target frame count down to N*4+1 (with a warning);
    loraflow refuses other counts instead, so the run trains the lengths the spec names."""
    options = spec.engine.options
    out: dict[str, Any] = {k: options[k] for k in VIDEO_OPTIONS if k in options}
    frames = out.setdefault("target_frames", [1])
    where = "engine.options.target_frames"
    if not isinstance(frames, list) or not frames or not all(isinstance(f, int) and f >= 1 for f in frames):
        raise UserInputError(f"{where} must be a list of frame counts", fix="write e.g. [1, 33]", where=where)
    bad = [f for f in frames if (f - 1) % 4]
    if bad:
        near = ", ".join(str((f - 1) // 4 * 4 + 1) for f in bad)
        raise UserInputError(
            f"{where}: {bad} are not of the form N*4+1 that Wan's VAE needs", fix=f"use {near}", where=where
        )
    out["target_frames"] = sorted(set(frames))
    extraction = out.setdefault("frame_extraction", "head")
    if extraction not in FRAME_EXTRACTIONS:
        where = "engine.options.frame_extraction"
        fix = f"use one of {', '.join(FRAME_EXTRACTIONS)}"
        raise UserInputError(f"{where}: unknown '{extraction}'", fix=fix, where=where)
    if extraction == "chunk" and 1 in out["target_frames"]:
        raise UserInputError(
            "engine.options.target_frames: 1 with frame_extraction chunk makes every frame a sample",
            fix="remove 1 from target_frames, or use frame_extraction head",
        )
    for key in ("frame_stride", "frame_sample", "max_frames"):
        if key in out and not (isinstance(out[key], int) and out[key] >= 1):
            fix = f"set {key}: 1 or more"
            raise UserInputError(f"engine.options.{key} must be a whole number of at least 1", fix=fix)
    if "source_fps" in out:
        if not isinstance(out["source_fps"], (int, float)) or out["source_fps"] <= 0:
            fix = "write the clips' rate, e.g. 30.0"
            raise UserInputError("engine.options.source_fps must be a frame rate", fix=fix)
        out["source_fps"] = float(out["source_fps"])  # musubi needs a decimal number (30.0, not 30)
    return out
