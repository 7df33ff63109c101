"""Volume-dependent plasticity.

A weight's "spine volume" is ``v = |w|/(|w| + 1)``; its mean plasticity
``μ = base_lr·exp(−stability_factor·v)``; the gradient is scaled by a fresh
``|N(μ, lr_variability·μ)|`` every optimizer step. The noise is counter-based
(:mod:`biofx.rng`), keyed by the layer and the step, so it is the same for every
micro-batch of a step and on every rank.
"""

from __future__ import annotations

import torch

from .. import rng
from ..config import BioConfig


def factor(
    weight: torch.Tensor,
    key: torch.Tensor,
    step: torch.Tensor,
    base_lr: float,
    stability_factor: float,
    lr_variability: float,
) -> torch.Tensor:
    """``|N(μ, lr_variability·μ)|`` per weight, float32."""
    magnitude = weight.detach().float().abs()
    mu = base_lr * torch.exp(-stability_factor * (magnitude / (magnitude + 1.0)))
    z = rng.normal(weight.shape, key, step, rng.VOLUME)
    return mu * (1.0 + lr_variability * z).abs()


def factor_for(weight: torch.Tensor, key: torch.Tensor, step: torch.Tensor, config: BioConfig) -> torch.Tensor:
    return factor(weight, key, step, config.base_lr, config.stability_factor, config.lr_variability)
