"""Crystallization (synaptic stabilization).

On the step's whole gradient g: where ``|g|/|w| < crystal_thresh`` (already well optimized)
or ``|g| > mean|w|`` (a strong learning signal, mean over the layer), the weight's fuzzy
multiplier is dampened, ``f ← f·dampening_factor``. The change persists.
"""

from __future__ import annotations

import torch

from ..config import BioConfig
from ..kernels import fused


def mask(weight: torch.Tensor, grad: torch.Tensor, crystal_thresh: float) -> torch.Tensor:
    """Where a weight crystallizes (boolean, weight's shape)."""
    w = weight.detach().float().abs()
    g = grad.float().abs()
    return (g / w < crystal_thresh) | (g > w.mean())


@fused
def crystallized(
    multipliers: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, crystal_thresh: float, dampening: float
) -> torch.Tensor:
    """The multipliers after one crystallization (one pass, no host sync, no indexing)."""
    return multipliers * torch.where(mask(weight, grad, crystal_thresh), dampening, 1.0)


def crystallize_(multipliers: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, config: BioConfig) -> None:
    """Dampen ``multipliers`` in place where :func:`mask` holds (on flat views: one kernel for all layers)."""
    flat = crystallized(
        multipliers.reshape(-1),
        weight.detach().reshape(-1),
        grad.reshape(-1),
        config.crystal_thresh,
        config.dampening_factor,
    )
    multipliers.copy_(flat.view(multipliers.shape))
