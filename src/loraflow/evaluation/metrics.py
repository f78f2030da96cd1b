"""The numbers behind the effect check and the scorecard, from renders and embeddings.

- effect: how far the LoRA moves a render, as the relative distance between the final latents of the same
  prompt and seed with and without it (0: identical; about 1.4: unrelated latents of equal size).
- trigger dependence: the share of that effect the trigger word carries, 1 - effect without the trigger /
  effect with it (0: the LoRA does the same with or without it; clipped to [0, 1]).
- similarity: mean cosine between the samples' and the reference images' embeddings.
- memorization: the highest cosine between a sample and any one training image.
"""

from __future__ import annotations

import torch

from loraflow.evaluation.render import Render


def relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| over the root mean square of the two norms: scale-free, symmetric, 0 when equal."""
    a, b = a.double().flatten(), b.double().flatten()
    scale = torch.sqrt((a.square().sum() + b.square().sum()) / 2)
    return float((a - b).norm() / scale) if scale > 0 else 0.0


def mean_distance(left: list[Render], right: list[Render]) -> float:
    pairs = list(zip(left, right, strict=True))
    return sum(relative_distance(x.latent, y.latent) for x, y in pairs) / len(pairs) if pairs else 0.0


def trigger_dependence(effect: float, effect_without: float) -> float:
    return 0.0 if effect <= 0 else min(1.0, max(0.0, 1.0 - effect_without / effect))


def mean_similarity(samples: torch.Tensor, references: torch.Tensor) -> float:
    if not len(samples) or not len(references):
        return 0.0
    return float((samples @ references.T).mean())


def closest(samples: torch.Tensor, training: torch.Tensor) -> tuple[float, int]:
    """The highest sample-to-training-image cosine and which training image it is."""
    if not len(samples) or not len(training):
        return 0.0, -1
    sims = samples @ training.T
    best = int(sims.max(dim=0).values.argmax())
    return float(sims.max()), best
