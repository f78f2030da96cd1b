"""The attention kernel choice and the CUDA-fault failure, checked on the CPU with faked GPUs and faults."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from loraflow.monitor import events as ev
from loraflow.monitor.builtin_parser import BuiltinParser
from loraflow.trainer import attention
from loraflow.trainer.__main__ import failure
from loraflow.trainer.attention import AttentionChoice, choose, known_bad, self_test
from loraflow.trainer.loop import train
from tests.trainer.test_trainer import events_of

HOPPER, AMPERE = (9, 0), (8, 0)
NO_KERNEL = "No available kernel. Aborting execution."
ILLEGAL = "CUDA error: an illegal memory access was encountered"


class Probe:
    """A fake self-test: records what was tried, fails the backends it is told to."""

    def __init__(self, fail: dict[str, str] | None = None) -> None:
        self.fail = fail or {}
        self.tried: list[str] = []

    def __call__(self, backend: str) -> None:
        self.tried.append(backend)
        if backend in self.fail:
            raise RuntimeError(self.fail[backend])


@pytest.fixture
def sdp_flags() -> Iterator[None]:
    """Put torch's process-wide SDPA flags back after a test that applies a choice."""
    cuda = torch.backends.cuda
    saved = (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.cudnn_sdp_enabled())
    yield
    cuda.enable_flash_sdp(saved[0])
    cuda.enable_mem_efficient_sdp(saved[1])
    cuda.enable_cudnn_sdp(saved[2])
    cuda.enable_math_sdp(True)


def test_cudnn_is_known_bad_on_hopper_with_recent_torch_only() -> None:
    assert "cudnn" in known_bad("2.11.0+cu130", HOPPER)
    assert "illegal memory access" in known_bad("2.5.1", HOPPER)["cudnn"]
    assert known_bad("2.11.0+cu130", AMPERE) == {}
    assert known_bad("2.4.1+cu124", HOPPER) == {}


def test_hopper_never_runs_cudnn_not_even_in_the_self_test() -> None:
    probe = Probe()
    choice = choose("2.11.0+cu130", HOPPER, probe)
    assert choice.backend == "flash"
    assert probe.tried == ["flash"]
    assert "illegal memory access" in choice.disabled["cudnn"]
    assert "efficient" not in choice.disabled  # left on: torch's fallback for shapes flash does not take
    assert choice.message().startswith("attention: flash (cudnn off: cuDNN attention crashes")


def test_failed_self_test_falls_back_to_the_next_kernel() -> None:
    probe = Probe({"flash": NO_KERNEL})
    choice = choose("2.11.0+cu130", HOPPER, probe)
    assert choice.backend == "efficient" and probe.tried == ["flash", "efficient"]
    assert choice.disabled["flash"] == f"self-test failed: {NO_KERNEL}"


def test_cudnn_only_when_flash_and_efficient_fail_and_not_known_bad() -> None:
    both = {"flash": NO_KERNEL, "efficient": "not supported"}
    ampere = Probe(both)
    assert choose("2.11.0", AMPERE, ampere).backend == "cudnn" and ampere.tried == ["flash", "efficient", "cudnn"]
    hopper = Probe(both)
    choice = choose("2.11.0", HOPPER, hopper)
    assert choice.backend == "math" and hopper.tried == ["flash", "efficient"]
    assert set(choice.disabled) == {"flash", "efficient", "cudnn"}
    assert choose("2.11.0", AMPERE, Probe({**both, "cudnn": "CUDNN_BACKEND_API_FAILED"})).backend == "math"


def test_a_cuda_fault_in_the_self_test_is_not_swallowed() -> None:
    """After an illegal memory access the CUDA context is dead: trying the next kernel would fault too."""
    with pytest.raises(RuntimeError, match="illegal memory access"):
        choose("2.11.0", AMPERE, Probe({"flash": ILLEGAL}))


def test_forced_backend() -> None:
    probe = Probe()
    choice = choose("2.11.0", HOPPER, probe, forced="math")
    assert choice.backend == "math" and set(choice.disabled) == {"flash", "efficient", "cudnn"} and probe.tried == []
    assert set(choose("2.11.0", HOPPER, probe, forced="efficient").disabled) == {"flash", "cudnn"}
    with pytest.raises(ValueError, match="LORAFLOW_ATTENTION='fastest'"):
        choose("2.11.0", HOPPER, probe, forced="fastest")


def test_real_self_test_on_the_cpu() -> None:
    """The probe runs real attention forward+backward; a kernel that cannot run raises, one that can passes."""
    probe = self_test(torch.device("cpu"), heads=2, head_dim=16, seq_len=40, dtype=torch.float32)
    probe("math")
    with pytest.raises(RuntimeError):
        probe("cudnn")  # no cuDNN kernel on a CPU: the same error a GPU without it gives


def test_configure_on_a_faked_hopper_applies_the_flags_once(monkeypatch, sdp_flags) -> None:
    probe = Probe()
    monkeypatch.setattr(attention, "_CHOSEN", {})
    monkeypatch.setattr(attention, "self_test", lambda *a, **k: probe)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: HOPPER)
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    monkeypatch.delenv(attention.ENV, raising=False)
    first = attention.configure_attention(torch.device("cuda:0"), 24, 128, 4608)
    assert first.backend == "flash"
    cuda = torch.backends.cuda
    assert not cuda.cudnn_sdp_enabled() and cuda.flash_sdp_enabled() and cuda.math_sdp_enabled()
    assert attention.configure_attention(torch.device("cuda:0"), 24, 128, 256) is first  # sampling: same choice
    assert probe.tried == ["flash"]
    monkeypatch.setenv(attention.ENV, "math")
    forced = attention.configure_attention(torch.device("cuda:1"), 24, 128, 4608)
    assert forced.backend == "math" and not cuda.flash_sdp_enabled() and not cuda.mem_efficient_sdp_enabled()


def test_cpu_keeps_torch_defaults_and_training_logs_the_choice(make_config, capsys, sdp_flags) -> None:
    assert attention.configure_attention(torch.device("cpu"), 2, 16, 80) == AttentionChoice("default")
    assert train(make_config(steps=1, checkpoint_every=1)) == 0
    logs = [e for e in events_of(capsys) if e["event"] == "log" and "attention" in e]
    assert logs and logs[0]["attention"] == "default" and logs[0]["message"] == "attention: default"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "oom"),
        ("RuntimeError: CUDA error: out of memory", "oom"),
        (f"torch.AcceleratorError: {ILLEGAL}", "cuda_fault"),
        ("RuntimeError: cuDNN error: CUDNN_STATUS_EXECUTION_FAILED", "cuda_fault"),
        ("RuntimeError: CUDA error: unspecified launch failure", "cuda_fault"),
        ("ValueError: no images in /data/manifest.json", "crash"),
        ("OSError: Error no file named config.json found in directory /m/transformer.", "bad_model"),
    ],
)
def test_failure_codes(text: str, code: str) -> None:
    got, hint = failure(text)
    assert got == code
    assert (hint != "") == (code != "crash")


FAULTY_TRAINER = """
import sys, torch
from diffusers import FluxTransformer2DModel
real, calls = FluxTransformer2DModel.forward, []
def forward(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # the third training step: a kernel faults as cuDNN attention did on the H200
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    return real(self, *args, **kwargs)
FluxTransformer2DModel.forward = forward
from loraflow.trainer.__main__ import main
sys.exit(main([sys.argv[1]]))
"""


def test_cuda_fault_in_training_ends_with_its_code_and_hint(make_config, tmp_path: Path) -> None:
    """A fault in the transformer's forward (injected on the CPU) ends the job as cuda_fault with a hint,
    through the same parser the runner reads the trainer's output with."""
    cfg = make_config(steps=10, checkpoint_every=1)
    path = tmp_path / "config.json"
    cfg.write(path)
    proc = subprocess.run(
        [sys.executable, "-c", FAULTY_TRAINER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300
    )
    assert proc.returncode == 1, proc.stdout.decode()[-2000:]
    parser = BuiltinParser()
    events = parser.feed(proc.stdout) + parser.flush()
    progress = [e.data["step"] for e in events if e.type == ev.PROGRESS]
    assert progress == [1, 2]
    errors = [e.data for e in events if e.type == ev.ERROR]
    assert errors and all(e["code"] == "cuda_fault" for e in errors)
    final = errors[-1]  # the trainer's own error event: what the runner records as the failure
    assert "illegal memory access" in final["message"] and "LORAFLOW_ATTENTION=math" in final["hint"]
    assert "last checkpoint" in final["hint"]
