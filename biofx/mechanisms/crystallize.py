"""Crystallization (synaptic stabilization).

On the step's whole gradient g: where ``|g|/|w| < crystal_thresh`` (already well optimized)
or ``|g| > mean|w|`` (a strong learning signal, mean over the layer), the weight's fuzzy
multiplier is dampened, ``f ← f·dampening_factor``. The change persists.
"""

from __future__ import annotations

import torch

from ..config import BioConfig


def mask(weight: torch.Tensor, grad: torch.Tensor, crystal_thresh: float) -> torch.Tensor:
    """Where a weight crystallizes (boolean, weight's shape)."""
    w = weight.detach().float().abs()
    g = grad.float().abs()
    return (g / w < crystal_thresh) | (g > w.mean())


def crystallize_(multipliers: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, config: BioConfig) -> None:
    """Dampen ``multipliers`` in place where :func:`mask` holds (no host sync, no indexing)."""
    hit = mask(weight, grad, config.crystal_thresh)
    multipliers.mul_(torch.where(hit, config.dampening_factor, 1.0))
