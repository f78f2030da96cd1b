"""The builtin trainer's noise levels come from diffusers' own density: same numbers as the formulas it replaced.

The pinned tiny loss curve (test_loss_curve.py) holds only if the generator is read in the same order and
amounts; these tests say so for each sampling mode, batch sizes on both sides of CPU's vectorised path.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.training_utils import compute_density_for_timestep_sampling

from loraflow.trainer.flow import sample_sigmas


def by_hand(batch: int, mode: str, shift: float, generator: torch.Generator) -> torch.Tensor:
    """The formulas flow.py used before it called diffusers."""
    if mode in ("sigmoid", "logit_normal", "shift"):
        u = torch.sigmoid(torch.randn(batch, generator=generator))
    else:
        u = torch.rand(batch, generator=generator)
    if mode == "shift":
        u = shift * u / (1 + (shift - 1) * u)
    return u.clamp(1e-4, 1.0)


@pytest.mark.parametrize("mode", ["uniform", "sigmoid", "logit_normal", "shift"])
@pytest.mark.parametrize("batch", [1, 2, 7, 16, 33])
def test_diffusers_density_draws_what_the_hand_formula_drew(mode: str, batch: int) -> None:
    ours, theirs = torch.Generator().manual_seed(1234), torch.Generator().manual_seed(1234)
    for _ in range(3):  # and leaves the generator where the old code left it: the next draws agree too
        assert torch.equal(sample_sigmas(batch, mode, 3.1582, ours), by_hand(batch, mode, 3.1582, theirs))
    assert torch.equal(torch.randn(5, generator=ours), torch.randn(5, generator=theirs))


def test_the_logit_normal_is_diffusers_sd3_density_with_mean_0_and_std_1() -> None:
    drawn = sample_sigmas(4096, "sigmoid", 1.0, torch.Generator().manual_seed(7))
    helper = compute_density_for_timestep_sampling(
        "logit_normal", 4096, logit_mean=0.0, logit_std=1.0, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(drawn, helper.clamp(1e-4, 1.0))
    assert 0.45 < float(drawn.median()) < 0.55  # centred: a logit-normal, not uniform's spread
