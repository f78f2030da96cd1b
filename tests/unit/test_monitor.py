"""Turning trainer output into events, whatever the chunking; the stall detector's rules."""

from __future__ import annotations

import json

import pytest

from loraflow.monitor.builtin_parser import BuiltinParser
from loraflow.monitor.lines import LineSplitter
from loraflow.monitor.stall import StallDetector
from loraflow.nvidia_smi import parse_nvidia_smi
from loraflow.trainer.events import PREFIX

LOG = (
    "Loading weights: 100%|##########| 36/36\r\n"
    + PREFIX
    + json.dumps({"event": "phase", "t": 1.0, "phase": "training", "total": 30, "start_step": 10})
    + "\n"
    + PREFIX
    + json.dumps({"event": "resumed", "t": 1.0, "step": 10, "total": 30, "checkpoint": "checkpoints/step-000010"})
    + "\n"
    + PREFIX
    + json.dumps(
        {
            "event": "progress",
            "t": 1.1,
            "step": 11,
            "total": 30,
            "loss": 0.5,
            "lr": 1e-4,
            "rate": 2.5,
            "elapsed_s": 0.4,
            "eta_s": 7.6,
        }
    )
    + "\r"
    + PREFIX
    + json.dumps({"event": "checkpoint", "t": 1.2, "step": 20, "path": "checkpoints/step-000020"})
    + "\n"
    + "Traceback (most recent call last):\n  File x\n"
    + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    + "torch.OutOfMemoryError: CUDA out of memory. again\n"
    + PREFIX
    + json.dumps({"event": "done", "t": 2.0, "step": 30, "total": 30, "lora": "x.safetensors"})
)


def expected() -> list[tuple[str, dict]]:
    return [
        ("phase", {"phase": "training", "total": 30, "start_step": 10}),
        ("resumed", {"step": 10, "total": 30, "checkpoint": "checkpoints/step-000010"}),
        ("progress", {"step": 11, "total": 30, "loss": 0.5, "lr": 1e-4, "rate": 2.5, "elapsed_s": 0.4, "eta_s": 7.6}),
        ("checkpoint.saved", {"step": 20, "path": "checkpoints/step-000020"}),
        ("error", {"code": "oom", "message": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"}),
        ("result", {"step": 30, "total": 30, "lora": "x.safetensors"}),
    ]


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_builtin_parser_any_chunking(chunk: int) -> None:
    parser = BuiltinParser()
    data = LOG.encode()
    events = []
    for i in range(0, len(data), chunk):
        events += parser.feed(data[i : i + chunk])
    events += parser.flush()
    got = [(e.type, e.data) for e in events]
    want = expected()
    assert [g[0] for g in got] == [w[0] for w in want]
    for (gt, gd), (_, wd) in zip(got, want, strict=True):
        if gt == "error":
            assert gd["code"] == "oom" and "vram_preset" in gd["hint"] and gd["message"] == wd["message"]
        else:
            assert gd == wd


def test_line_splitter_handles_cr_and_utf8_split() -> None:
    splitter = LineSplitter()
    text = "step 1\rstep 2\r\nbar ██\n".encode()
    out = []
    for byte in text:
        out += splitter.feed(bytes([byte]))
    assert out == ["step 1", "step 2", "bar ██"]


def test_stall_only_counts_in_training_phase() -> None:
    d = StallDetector(stall_minutes=1, gpu_idle_minutes=5, now=0)
    d.on_phase("caching", 0)
    assert d.check(1000) is None  # slow caching is not a stall
    d.on_phase("training", 1000)
    d.on_progress(1030)
    assert d.check(1080) is None
    stall = d.check(1100)
    assert stall is not None and stall.reason == "no_progress"


def test_gpu_idle_detected_when_stats_exist() -> None:
    d = StallDetector(stall_minutes=60, gpu_idle_minutes=5, now=0)
    d.on_phase("training", 0)
    for t in range(0, 400, 30):
        d.on_progress(t)
        d.on_gpu([0.0], t)
    stall = d.check(400)
    assert stall is not None and stall.reason == "gpu_idle"
    d2 = StallDetector(stall_minutes=60, gpu_idle_minutes=5, now=0)
    d2.on_phase("training", 0)
    for t in range(0, 400, 30):
        d2.on_progress(t)
        d2.on_gpu(None, t)  # no NVIDIA stats: never a GPU stall
    assert d2.check(400) is None


def test_nvidia_smi_parsing() -> None:
    stats = parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 97, 40000, 81559\n1, NVIDIA H100 80GB HBM3, 0, 3, 81559\n")
    assert [s["util"] for s in stats] == [97.0, 0.0] and stats[0]["name"] == "NVIDIA H100 80GB HBM3"


def test_a_result_check_in_the_trainer_that_stops_moving_is_ended_as_a_finished_trainer() -> None:
    """The builtin trainer checks its LoRA files after training (phase `checking`, a phase line per step of
    the check); one that hangs there is ended like a trainer hung on its way out (its LoRA is written)."""
    d = StallDetector(stall_minutes=1, gpu_idle_minutes=5, now=0)
    d.on_phase("checking", 10)
    assert d.check(60) is None
    d.on_phase("checking", 60)  # the check's next step
    assert d.check(110) is None
    stall = d.check(130)
    assert stall is not None and stall.reason == "no_exit" and "result check" in stall.message
