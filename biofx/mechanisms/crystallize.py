"""Crystallization (synaptic stabilization).

On the step's whole gradient g: where ``|g|/|w| < crystal_thresh`` (already well optimized)
or ``|g| > mean|w|`` (a strong learning signal, mean over the layer), the weight's fuzzy
multiplier is dampened, ``f ← f·dampening_factor``. The change persists (in ``fuzzy_lr``, or
as a count of dampenings with ``fuzzy_lr_storage="counter"``).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..config import BioConfig
from ..tiered_compile import flat, fused
from . import fuzzy


def mask(
    weight: torch.Tensor, grad: torch.Tensor, crystal_thresh: float, mean_magnitude: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Where a weight crystallizes (boolean, weight's shape).

    ``mean_magnitude``: mean|w| over the whole layer when ``weight`` is a shard of it
    (:mod:`biofx.sharding`); by default the mean over ``weight``.
    """
    w = weight.detach().float().abs()
    g = grad.float().abs()
    return (g / w < crystal_thresh) | (g > (w.mean() if mean_magnitude is None else mean_magnitude))


@fused
def crystallize_flat_(
    multipliers,
    weight: torch.Tensor,
    grad: torch.Tensor,
    crystal_thresh: float,
    dampening: float,
    mean_magnitude: Optional[torch.Tensor] = None,
) -> None:
    """One crystallization of flat multipliers (a tensor or a flat
    :class:`~biofx.mechanisms.fuzzy.Recomputed`), in place (one pass, no host sync, no indexing)."""
    fuzzy.dampen_(multipliers, mask(weight, grad, crystal_thresh, mean_magnitude), dampening)


def crystallize_(
    multipliers,
    weight: torch.Tensor,
    grad: torch.Tensor,
    config: BioConfig,
    mean_magnitude: Optional[torch.Tensor] = None,
) -> None:
    """Dampen ``multipliers`` (the ``fuzzy_lr`` tensor or a :class:`~biofx.mechanisms.fuzzy.Recomputed`)
    in place where :func:`mask` holds (on flat views: one kernel for all layers)."""
    with fuzzy.flat_multipliers(multipliers) as flat_multipliers:
        crystallize_flat_(
            flat_multipliers, flat(weight), flat(grad), config.crystal_thresh, config.dampening_factor,
            mean_magnitude,
        )  # fmt: skip
