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


def mean_abs(weight: torch.Tensor) -> torch.Tensor:
    """mean|w| (0-d float32), computed before a kernel and passed in: a reduction inside a
    dynamic-shape kernel made Inductor guard on the layer's size (``size <= 4096``), so a model
    with small and large layers compiled the kernel twice.

    One ``vector_norm``, which allocates nothing. ``abs().mean()`` is 4x faster alone on a
    CPU, but allocates ``|w|``, a tensor of the weight's size, and measured no faster inside a
    training step (about 1.1 ms per MLP step either way, the two alternated in one process).
    """
    return torch.linalg.vector_norm(weight.detach(), 1, dtype=torch.float32) / max(weight.numel(), 1)


def mask(
    weight: torch.Tensor, grad: torch.Tensor, crystal_thresh: float, mean_magnitude: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Where a weight crystallizes (boolean, weight's shape).

    ``mean_magnitude``: mean|w| over the whole layer (:func:`mean_abs`; over the layer, not
    the shard, when ``weight`` is a shard of it, :mod:`biofx.sharding`); by default
    :func:`mean_abs` of ``weight``.
    """
    w = weight.detach().float().abs()
    g = grad.float().abs()
    return (g / w < crystal_thresh) | (g > (mean_abs(weight) if mean_magnitude is None else mean_magnitude))


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
    in place where :func:`mask` holds (on flat views: one kernel for all layers; ``mean_magnitude``
    as there)."""
    mean_magnitude = mean_abs(weight) if mean_magnitude is None else mean_magnitude
    with fuzzy.flat_multipliers(multipliers) as flat_multipliers:
        crystallize_flat_(
            flat_multipliers, flat(weight), flat(grad), config.crystal_thresh, config.dampening_factor,
            mean_magnitude,
        )  # fmt: skip
