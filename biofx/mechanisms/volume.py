"""Volume-dependent plasticity.

A weight's "spine volume" is ``v = |w|/(|w| + 1)``; its mean plasticity
``μ = base_lr·exp(−stability_factor·v)``; the gradient is scaled by a fresh
``|N(μ, lr_variability·μ)|`` every optimizer step. The noise is counter-based
(:mod:`biofx.rng`), keyed by the layer and the step, so it is the same for every
micro-batch of a step and on every rank.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import rng
from ..config import BioConfig
from ..tiered_compile import flat, fused


def seed(key: torch.Tensor, step: torch.Tensor, values: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """The seed of a step's volume noise (:func:`biofx.rng.stream_seed`; ``values``: key's and
    step's on the host, when known)."""
    return rng.stream_seed(key, step, rng.VOLUME, values)


def factor(
    weight: torch.Tensor,
    seed: torch.Tensor,
    base_lr: float,
    stability_factor: float,
    lr_variability: float,
    offset: int = 0,
) -> torch.Tensor:
    """``|N(μ, lr_variability·μ)|`` per weight, float32 (``weight`` from flat index ``offset`` of
    the layer's; ``seed`` the step's, from :func:`seed`)."""
    magnitude = weight.detach().float().abs()
    mu = base_lr * torch.exp(-stability_factor * (magnitude / (magnitude + 1.0)))
    z = rng.normal(weight.shape, seed, offset)
    return mu * (1.0 + lr_variability * z).abs()


@fused
def _scale_flat(grad, weight, seed, base_lr, stability_factor, lr_variability, offset):
    return (grad.float() * factor(weight, seed, base_lr, stability_factor, lr_variability, offset)).to(grad.dtype)


def scale(
    grad: torch.Tensor,
    weight: torch.Tensor,
    seed: torch.Tensor,
    base_lr: float,
    stability_factor: float,
    lr_variability: float,
    offset: int = 0,
) -> torch.Tensor:
    """``g·|N(μ, lr_variability·μ)|`` in one pass (computed in float32, returned in g's dtype;
    ``seed`` the step's, from :func:`seed`).

    Runs on flattened views, so one dynamic-shape kernel serves every layer (same numbers:
    the noise is indexed by the flat element index; a shard's starts at ``offset``).
    """
    scaled = _scale_flat(flat(grad), flat(weight), seed, base_lr, stability_factor, lr_variability, offset)
    return scaled.view(grad.shape)


def scale_for(grad: torch.Tensor, weight: torch.Tensor, seed: torch.Tensor, config: BioConfig, offset: int = 0):
    """:func:`scale` with the parameters of ``config``."""
    return scale(grad, weight, seed, config.base_lr, config.stability_factor, config.lr_variability, offset)
