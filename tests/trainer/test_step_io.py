"""What makes the step GPU-bound, checked on the CPU: no cache file is read per step, and the device's
noise generator is saved and restored with each checkpoint (on a GPU it is apart from the host's)."""

from __future__ import annotations

import torch

from loraflow.trainer import data as data_module
from loraflow.trainer.loop import _restore_rng, _rng_state, train


def test_cache_files_are_read_once_per_run_not_per_step(make_config, monkeypatch) -> None:
    reads: list[str] = []
    real = data_module.load_file

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data_module, "load_file", counting)
    assert train(make_config("short", steps=2, checkpoint_every=100, sample_at_end=False)) == 0
    short = len(reads)
    reads.clear()
    assert train(make_config("long", steps=12, checkpoint_every=100, sample_at_end=False)) == 0
    assert short > 0 and len(reads) == short


def test_device_noise_generator_state_travels_with_the_checkpoint() -> None:
    host, device = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    state = _rng_state(host, device)
    expected = (torch.rand(3, generator=host), torch.rand(3, generator=device))
    _restore_rng(host, device, state)
    assert torch.equal(torch.rand(3, generator=host), expected[0])
    assert torch.equal(torch.rand(3, generator=device), expected[1])
    assert "noise_gen" not in _rng_state(host, host)  # on a CPU one generator serves both


def test_text_encoder_stays_on_the_cpu_when_the_gpu_is_too_full(monkeypatch) -> None:
    """Next to a quantized base on a 12-24 GB card T5-XXL (~9.5 GB) does not fit: it encodes on the CPU."""
    from loraflow.trainer.components import fits_beside

    module = torch.nn.Linear(1024, 1024)  # 4 MiB of fp32 weights
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 << 20, 80 << 30))
    assert not fits_beside(module, cuda)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (64 << 20, 80 << 30))
    assert fits_beside(module, cuda)
    assert fits_beside(module, torch.device("cpu"))


def test_loss_is_read_only_when_a_report_is_due() -> None:
    """On a GPU each read waits for the GPU: losses pile up as tensors and are read at most once per
    interval, or when a checkpoint or sample forces it, as the mean of the steps since the last read."""
    from loraflow.trainer.report import LossReport

    now = [100.0]
    report = LossReport(1.0, clock=lambda: now[0])
    assert not report.due(forced=True)  # nothing to report yet
    for t, loss in ((100.2, 1.0), (100.6, 2.0)):
        now[0] = t
        report.add(torch.tensor(loss, dtype=torch.float64))
        assert not report.due()
    assert report.due(forced=True)
    now[0] = 101.1
    report.add(torch.tensor(3.0, dtype=torch.float64))
    assert report.due() and report.read() == 2.0 and report.pending == []
    report.add(torch.tensor(5.0, dtype=torch.float64))
    assert not report.due() and report.due(forced=True) and report.read() == 5.0
    every_step = LossReport(0.0)
    every_step.add(torch.tensor(0.5))
    assert every_step.due()
